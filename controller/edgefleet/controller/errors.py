"""Controller errors, on top of ``edgefleet.common.errors`` (same rule: by what the caller does).

::

    PermanentError
    ├── AlreadyExistsError    the name is taken (release name:version); pick another (.kind, .name)
    └── NoSigningKeyError     nothing can be signed until an operator makes a key
    TransientError
    └── BrokerUnavailableError the MQTT session is down; a deploy now would only be queued
"""

from __future__ import annotations

from edgefleet.common.errors import PermanentError, TransientError


class AlreadyExistsError(PermanentError):
    def __init__(self, kind: str, name: str) -> None:
        super().__init__(f"{kind} {name} already exists")
        self.kind = kind
        self.name = name


class NoSigningKeyError(PermanentError):
    """No active signing key, or its private half is missing."""


class BrokerUnavailableError(TransientError):
    """The controller is not connected to the MQTT broker."""
