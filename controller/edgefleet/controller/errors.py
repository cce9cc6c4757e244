"""Controller errors, on top of ``edgefleet.common.errors`` (same rule: by what the caller does).

::

    PermanentError
    ├── NoSigningKeyError     nothing can be signed until an operator makes a key
    └── RolloutStateError     pause a finished rollout, abort one that is done (.rollout_id)
        └── FleetBusyError    deploy to a fleet whose rollout is unfinished: wait or abort it
    TransientError
    └── BrokerUnavailableError the MQTT session is down; a deploy now would only be queued
"""

from __future__ import annotations

from edgefleet.common.errors import PermanentError, TransientError


class NoSigningKeyError(PermanentError):
    """No active signing key, or its private half is missing."""


class BrokerUnavailableError(TransientError):
    """The controller is not connected to the MQTT broker."""


class RolloutStateError(PermanentError):
    """The rollout (or its fleet) is not in a state that allows what was asked."""

    def __init__(self, message: str, *, rollout_id: str) -> None:
        super().__init__(message)
        self.rollout_id = rollout_id


class FleetBusyError(RolloutStateError):
    """A deploy to a fleet that has an unfinished rollout."""
