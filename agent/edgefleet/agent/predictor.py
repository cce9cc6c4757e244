"""The in-process Predict path: the model active right now, swapped atomically on activation.

``Predictor.predict`` is what the gRPC servicer wraps (and what a benchmark can time against
bare ``InferenceSession.run``): one attribute read, input validation, the run. Swapping is a
single reference assignment, so a request in flight finishes on the runtime it started with.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from edgefleet.agent.errors import NoActiveModelError
from edgefleet.agent.runtime import Array, ModelRuntime


class Predictor:
    def __init__(self, runtime: ModelRuntime | None = None) -> None:
        self._runtime = runtime

    @property
    def current(self) -> ModelRuntime | None:
        return self._runtime

    def swap(self, runtime: ModelRuntime | None) -> ModelRuntime | None:
        """Serve ``runtime`` from now on; return the one it replaces."""
        old, self._runtime = self._runtime, runtime
        return old

    def require(self) -> ModelRuntime:
        runtime = self._runtime
        if runtime is None:
            raise NoActiveModelError()
        return runtime

    def predict(
        self, arrays: Mapping[str, Array], output_names: Sequence[str] = ()
    ) -> dict[str, Array]:
        """Outputs by name; ``InvalidInputError`` naming the input that does not fit."""
        runtime = self._runtime
        if runtime is None:
            raise NoActiveModelError()
        return runtime.predict(arrays, output_names)
