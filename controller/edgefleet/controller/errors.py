"""Controller errors, on top of ``edgefleet.common.errors`` (same rule: by what the caller does).

::

    PermanentError
    ├── InvalidInputError (common)
    │   └── SandboxError      a user's model crashed, hung or broke a limit in its sandbox
    │                         process (.what: "model inspection", "golden outputs", ...)
    ├── NoSigningKeyError     nothing can be signed until an operator makes a key
    ├── RuntimeMissingError   deploy of a release whose runtime some of the fleet's devices
    │                         lack (a container release where Docker is not): .devices
    ├── RolloutStateError     pause a finished rollout, abort one that is done (.rollout_id)
    │   └── FleetBusyError    deploy to a fleet whose rollout is unfinished: wait or abort it
    └── IdentityRefusedError  a device proved no identity: bad/used/expired enrollment token,
                              or a certificate not ours, expired, revoked (UNAUTHENTICATED)
    TransientError
    └── BrokerUnavailableError the MQTT session is down; a deploy now would only be queued
"""

from __future__ import annotations

from edgefleet.common.errors import InvalidInputError, PermanentError, TransientError


class NoSigningKeyError(PermanentError):
    """No active signing key, or its private half is missing."""


class SandboxError(InvalidInputError):
    """The sandbox process running a user's model died, hung or ran out of memory: that
    model's request fails (INVALID_ARGUMENT), the controller carries on."""

    def __init__(self, message: str, *, what: str) -> None:
        super().__init__(message)
        self.what = what


class RuntimeMissingError(PermanentError):
    """A release needs a runtime (``container``) that these devices of the fleet do not
    offer: nothing is sent to any of them (FAILED_PRECONDITION)."""

    def __init__(self, message: str, *, devices: list[str]) -> None:
        super().__init__(message)
        self.devices = devices


class BrokerUnavailableError(TransientError):
    """The controller is not connected to the MQTT broker."""


class RolloutStateError(PermanentError):
    """The rollout (or its fleet) is not in a state that allows what was asked."""

    def __init__(self, message: str, *, rollout_id: str) -> None:
        super().__init__(message)
        self.rollout_id = rollout_id


class FleetBusyError(RolloutStateError):
    """A deploy to a fleet that has an unfinished rollout."""


class IdentityRefusedError(PermanentError):
    """An enrollment token or device certificate that proves nothing: ask an operator for a
    new token (``edgectl device enroll``)."""
