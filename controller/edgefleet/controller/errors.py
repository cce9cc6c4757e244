"""Controller errors, on top of ``edgefleet.common.errors`` (same rule: by what the caller does).

::

    PermanentError
    └── NoSigningKeyError     nothing can be signed until an operator makes a key
    TransientError
    └── BrokerUnavailableError the MQTT session is down; a deploy now would only be queued
"""

from __future__ import annotations

from edgefleet.common.errors import PermanentError, TransientError


class NoSigningKeyError(PermanentError):
    """No active signing key, or its private half is missing."""


class BrokerUnavailableError(TransientError):
    """The controller is not connected to the MQTT broker."""
