"""The agent's own errors, on top of ``edgefleet.common.errors``.

::

    EdgeFleetError
    ├── TransientError
    │   └── NoActiveModelError   Predict before any model is active (gRPC UNAVAILABLE)
    ├── PermanentError
    │   ├── StateFileError       state.json unreadable: refuse to start rather than forget
    │   │                        the last good model and the generation applied
    │   ├── SlotError            a slot dir misses its model or signed manifest
    │   ├── ModelDecodeError     a packed model blob does not decode (or its encoding is
    │   │                        unknown): the install fails, the old model keeps serving
    │   └── InvalidInputError    (common)
    │       └── RefusedInputError  the runtime refused a Predict's inputs and they are to blame
    │                            (``blame``): INVALID_ARGUMENT, never a runtime failure
    ├── InferenceFailedError     ONNX Runtime failed on input that passed validation (INTERNAL)
    └── StopRequestedError       the agent is stopping: abandon the current step, resume later
"""

from __future__ import annotations

from edgefleet.common.errors import (
    EdgeFleetError,
    InvalidInputError,
    PermanentError,
    TransientError,
)


class NoActiveModelError(TransientError):
    def __init__(self) -> None:
        super().__init__("no active model on this device yet")


class StateFileError(PermanentError):
    """The persisted device state cannot be read; the message names the file."""


class SlotError(PermanentError):
    """A slot does not hold a complete release (the message names the slot)."""


class ModelDecodeError(PermanentError):
    """A verified model blob cannot be turned into the model it stands for."""


class RefusedInputError(InvalidInputError):
    """The runtime refused inputs that passed the signature checks, and they are to blame
    (``blame.blame``); the message is the runtime's."""


class InferenceFailedError(EdgeFleetError):
    """The runtime raised on input that matched the model's signature."""


class StopRequestedError(EdgeFleetError):
    """Raised inside a long step (a download) when the agent is asked to stop."""
