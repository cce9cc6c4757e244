"""One loaded model in ONNX Runtime: signature check and input validation.

``ModelRuntime.predict`` is the hot path. ONNX Runtime itself refuses unknown inputs, wrong
dtypes, ranks and fixed dimensions, so the happy path adds one length check in Python (for
missing inputs) and calls ORT's C++ run directly (see ``_run_of``); when ORT refuses,
``_diagnose`` names the input and what was expected, in our words. When the inputs fit the
signature and ORT still fails, ``blame`` decides whose fault it is: the inputs'
(``RefusedInputError``, INVALID_ARGUMENT with ORT's message) or the release's
(``InferenceFailedError``, a runtime failure). The manifest and the model must agree on the
signature; a dimension the manifest fixes where the model is dynamic is checked in Python
(``_pinned``).

A manifest naming another runtime (``container``) is loaded by the loader the agent registered
for its data directory (``register_loader``; ``containers.Containers.load``), so whoever loads a
slot (install, start-up, fall-back) needs to know nothing of Docker; without one the slot is
refused as unsupported on this device.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from edgefleet.agent import blame, memory, providers
from edgefleet.agent.errors import InferenceFailedError, RefusedInputError
from edgefleet.common import externaldata, wire
from edgefleet.common import types as t
from edgefleet.common.errors import InvalidInputError, ModelLoadError

log = logging.getLogger(__name__)

Array = npt.NDArray[Any]

# (data directory, runtime) -> the loader of that agent: one process may hold several agents
_LOADERS: dict[tuple[Path, str], Callable[[LoadedModel], ModelRuntime]] = {}


def register_loader(
    data_dir: Path, runtime: str, loader: Callable[[LoadedModel], ModelRuntime] | None
) -> None:
    """Load slots under ``data_dir`` whose manifest names ``runtime`` with ``loader`` (None:
    no longer)."""
    key = (data_dir.resolve(), runtime)
    if loader is None:
        _LOADERS.pop(key, None)
    else:
        _LOADERS[key] = loader


def _loader_for(path: Path, runtime: str) -> Callable[[LoadedModel], ModelRuntime] | None:
    resolved = path.resolve()
    for (root, name), loader in list(_LOADERS.items()):
        if name == runtime and resolved.is_relative_to(root):
            return loader
    return None


_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
}


def spec_of(arg: Any) -> t.TensorSpec:
    """A model input/output (ORT ``NodeArg``) as a ``TensorSpec``; symbolic dims become -1."""
    dtype = _ORT_DTYPES.get(arg.type, arg.type)
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or ()))
    return t.TensorSpec(arg.name, dtype, shape)


def _run_of(session: Any) -> Callable[[list[str], Mapping[str, Any], None], list[Any]]:
    """ORT's C++ ``run`` under the Python ``InferenceSession.run``, when it is there.

    The Python wrapper spends about 1.5 us a call (a fifth of the digits model's whole run) on
    checks that do not apply here (graph capture, ``OrtValue`` ownership, provider fallback:
    done at load) or that ``predict`` does itself (missing inputs); the C++ run still refuses
    unknown names, wrong dtypes, ranks and dimensions. The wrapper is the fallback should a
    future ORT rename the attribute; ``test_runtime_uses_orts_own_run`` notices that.
    """
    inner = getattr(session, "_sess", None)
    run = getattr(inner, "run", None)
    return run if callable(run) else session.run  # type: ignore[no-any-return]


def _options() -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return options


def _merge(model: t.TensorSpec, declared: t.TensorSpec) -> t.TensorSpec:
    """The stricter of two agreeing specs, or ``ModelLoadError`` naming the disagreement."""
    if model.dtype != declared.dtype or len(model.shape) != len(declared.shape):
        raise ModelLoadError(f"model has {model.describe()}, manifest says {declared.describe()}")
    dims = []
    for m, d in zip(model.shape, declared.shape, strict=True):
        if m >= 0 and d >= 0 and m != d:
            raise ModelLoadError(
                f"model has {model.describe()}, manifest says {declared.describe()}"
            )
        dims.append(m if m >= 0 else d)
    return t.TensorSpec(model.name, model.dtype, tuple(dims))


def check_signature(
    model: Sequence[t.TensorSpec], declared: Sequence[t.TensorSpec], *, what: str
) -> tuple[t.TensorSpec, ...]:
    """Match a model's inputs (or outputs) against the manifest's; return the merged specs."""
    by_name = {s.name: s for s in model}
    if set(by_name) != {s.name for s in declared}:
        raise ModelLoadError(
            f"model {what} [{wire.describe_specs(model)}] do not match the manifest's "
            f"[{wire.describe_specs(declared)}]"
        )
    return tuple(_merge(by_name[s.name], s) for s in declared)


@dataclass(frozen=True)
class Faults:
    """What a runtime's own watch saw fail (``ModelRuntime.faults``), for the health window."""

    count: int = 0
    """New failures (a container's restarts) since the last look."""
    final: bool = False
    """The runtime is gone for good (a container exited, dead or removed): fail at once."""
    last: str = ""
    """What the last failure was, for the reason of a rollback."""


@dataclass(frozen=True)
class LoadedModel:
    """What identifies the release a runtime serves."""

    release: str
    slot: str
    manifest: t.Manifest
    manifest_digest: str


class ModelRuntime:
    provider: str = ""
    """The execution provider the session runs on ("": not an ONNX Runtime session here)."""
    fallback: str = ""
    """Why the release's first provider preference is not the one used ("": it is)."""

    def __init__(
        self,
        session: Any,
        model: LoadedModel,
        *,
        load_seconds: float,
        provider: str = providers.CPU,
        fallback: str = "",
    ) -> None:
        self.session = session
        self.provider = provider
        self.fallback = fallback
        self.model = model
        self.release = model.release
        self.load_seconds = load_seconds
        m = model.manifest
        model_inputs = {s.name: s for s in map(spec_of, session.get_inputs())}
        # the model's own dimension names (``input_ids`` and ``attention_mask``: "sequence"),
        # for ``blame`` to tell a caller's inconsistent inputs from a failing release
        self._dims: dict[str, blame.Dims] = {
            a.name: tuple(a.shape or ()) for a in session.get_inputs()
        }
        self.inputs = check_signature(list(model_inputs.values()), m.inputs, what="inputs")
        model_outputs = tuple(spec_of(a) for a in session.get_outputs())
        self.outputs = (
            check_signature(model_outputs, m.outputs, what="outputs")
            if m.outputs
            else model_outputs
        )
        self.output_names = [s.name for s in self.outputs]
        self._run = _run_of(session)
        self._n_inputs = len(self.inputs)
        # (input, axis, size) the manifest fixes where the model is dynamic: ORT cannot check them
        self._pinned = tuple(
            (s.name, axis, size)
            for s in self.inputs
            for axis, size in enumerate(s.shape)
            if size >= 0 and model_inputs[s.name].shape[axis] < 0
        )

    @classmethod
    def load(cls, path: Path, model: LoadedModel) -> ModelRuntime:
        """Load ``path`` on the first execution provider of the manifest's preference that
        runs here (``providers.open_session``; CPU at the last); ``ModelLoadError`` when ORT
        refuses it."""
        if model.manifest.runtime != "onnxruntime":
            loader = _loader_for(path, model.manifest.runtime)
            if loader is None:
                raise ModelLoadError(
                    f"runtime {model.manifest.runtime!r} is not supported on this device"
                )
            return loader(model)
        try:
            externaldata.refuse_external(path)  # ORT would read any file the model names
        except InvalidInputError as exc:
            raise ModelLoadError(f"refusing {model.release}: {exc}") from exc
        started = time.perf_counter()
        try:
            opened = providers.open_session(
                path, model.manifest.providers, slot_dir=path.parent, make_options=_options
            )
        except Exception as exc:  # ORT raises its own classes, all plain Exceptions
            raise ModelLoadError(f"ONNX Runtime cannot load {model.release}: {exc}") from exc
        loaded = cls(
            opened.session,
            model,
            load_seconds=time.perf_counter() - started,
            provider=opened.provider,
            fallback=opened.fallback,
        )
        memory.release_free_heap()  # what parsing and optimising the model freed
        return loaded

    def last_lines(self) -> str:
        """What the runtime last logged, to explain a failure ("" in-process: that is the
        agent's own log; a container release's runtime returns the end of its container's)."""
        return ""

    def faults(self) -> Faults:
        """Failures of the runtime itself since the last call, seen without a Predict (an
        in-process session has none; a container release's counts its restarts and exits)."""
        return Faults()

    # the hot path: ONNX Runtime checks names, dtypes, ranks and the model's fixed dimensions
    # itself, so Python only checks what the manifest pins beyond the model (usually nothing)
    # and explains a refusal after the fact.

    def predict(
        self, arrays: Mapping[str, Array], output_names: Sequence[str] = ()
    ) -> dict[str, Array]:
        if len(arrays) < self._n_inputs or self._pinned:
            self._check_pinned(arrays)
        names = self._pick_outputs(output_names) if output_names else self.output_names
        try:
            values = self._run(names, arrays, None)
        except Exception as exc:  # ORT raises its own classes, all plain Exceptions
            raise self._refusal(arrays, exc) from exc
        return dict(zip(names, values, strict=False))

    def _check_pinned(self, arrays: Mapping[str, Array]) -> None:
        """Missing inputs and dimensions the manifest pins: what ORT's C++ run does not check."""
        if len(arrays) < self._n_inputs:
            raise self._diagnose(arrays) or InvalidInputError("missing inputs")
        for name, axis, size in self._pinned:
            a = arrays.get(name)
            if a is not None and (a.ndim <= axis or a.shape[axis] != size):
                raise self._diagnose(arrays) or InvalidInputError(f"input {name!r} does not fit")

    def _refusal(self, arrays: Mapping[str, Array], exc: Exception) -> Exception:
        problem = self._diagnose(arrays)
        if problem is not None:
            return problem
        got = {name: tuple(np.shape(a)) for name, a in arrays.items()}
        why = blame.blame(exc, declared=self._dims, got=got)
        message = blame.runtime_message(exc)
        if why is None:
            return InferenceFailedError(f"inference failed: {message}")
        return RefusedInputError(
            f"the model refused the inputs{f' ({why})' if why else ''}: {message}"
        )

    def _pick_outputs(self, output_names: Sequence[str]) -> list[str]:
        known = set(self.output_names)
        for n in output_names:
            if n not in known:
                raise InvalidInputError(
                    f"unknown output {n!r}; the model's outputs are "
                    f"{wire.describe_specs(self.outputs)}"
                )
        return list(dict.fromkeys(output_names))

    def _diagnose(self, arrays: Mapping[str, Array]) -> InvalidInputError | None:
        """The slow path: a message naming the first input that does not fit, if one does not."""
        expected = wire.describe_specs(self.inputs)
        known = {s.name for s in self.inputs}
        for name in arrays:
            if name not in known:
                return InvalidInputError(f"unknown input {name!r}; the model takes {expected}")
        for spec in self.inputs:
            if spec.name not in arrays:
                return InvalidInputError(f"missing input {spec.name!r}; the model takes {expected}")
            a = np.asarray(arrays[spec.name])
            got = t.TensorSpec(spec.name, a.dtype.name, a.shape)
            if a.dtype != np.dtype(spec.dtype):
                return InvalidInputError(
                    f"input {spec.name!r}: expected dtype {spec.dtype}, got {a.dtype.name} "
                    f"(expected {spec.describe()}, got {got.describe()})"
                )
            fits = a.ndim == len(spec.shape) and all(
                d < 0 or n == d for n, d in zip(a.shape, spec.shape, strict=True)
            )
            if not fits:
                return InvalidInputError(
                    f"input {spec.name!r}: expected shape {spec.describe()}, got {got.describe()}"
                )
        return None
