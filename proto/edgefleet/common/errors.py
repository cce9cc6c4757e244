"""Errors, grouped by what the caller should do about them.

::

    EdgeFleetError
    ├── TransientError            retry later, with a delay (broker down, controller away)
    │   └── FetchError            a blob could not be fetched from any source
    └── PermanentError            do not retry the same input: report it, keep the last good state
        ├── IntegrityError        bytes do not match their sha256 digest (.digest, .actual)
        ├── SignatureError        bad signature, unknown key, wrong payload type (.key_id)
        ├── StaleGenerationError  desired state not newer than the last applied (.generation)
        ├── MalformedMessageError a payload that does not parse or misses required fields
        ├── InvalidInputError     a request that cannot be served as asked (bad tensor, version)
        ├── NotFoundError         unknown model, release, fleet or device (.kind, .name)
        ├── AlreadyExistsError    the name is taken (release name:version) (.kind, .name)
        └── ModelLoadError        a model that ONNX Runtime refuses or that fails its health check
"""

from __future__ import annotations


class EdgeFleetError(Exception):
    """Root of every error this project raises on purpose."""


class TransientError(EdgeFleetError):
    """The same operation may succeed later."""


class PermanentError(EdgeFleetError):
    """Retrying the same input will fail the same way."""


class FetchError(TransientError):
    def __init__(self, digest: str, reason: str) -> None:
        super().__init__(f"cannot fetch {digest}: {reason}")
        self.digest = digest
        self.reason = reason


class IntegrityError(PermanentError):
    def __init__(self, digest: str, actual: str) -> None:
        super().__init__(f"digest mismatch: expected {digest}, got {actual}")
        self.digest = digest
        self.actual = actual


class SignatureError(PermanentError):
    def __init__(self, reason: str, *, key_id: str = "") -> None:
        super().__init__(reason)
        self.key_id = key_id


class StaleGenerationError(PermanentError):
    def __init__(self, generation: int, applied: int) -> None:
        super().__init__(
            f"stale desired state: generation {generation} is not newer than applied {applied}"
        )
        self.generation = generation
        self.applied = applied


class MalformedMessageError(PermanentError):
    """A payload that does not decode, or decodes without the fields it must have."""


class InvalidInputError(PermanentError):
    """A request whose arguments cannot be served: the message names the argument."""


class NotFoundError(PermanentError):
    def __init__(self, kind: str, name: str) -> None:
        super().__init__(f"unknown {kind}: {name}")
        self.kind = kind
        self.name = name


class AlreadyExistsError(PermanentError):
    def __init__(self, kind: str, name: str) -> None:
        super().__init__(f"{kind} {name} already exists")
        self.kind = kind
        self.name = name


class ModelLoadError(PermanentError):
    """ONNX Runtime refused the model, or it failed its smoke inference."""
