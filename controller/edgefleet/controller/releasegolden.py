"""Golden data of a release: checked against the model's signature, completed, normalized.

What an operator gives ``edgectl release create --golden FILE.npz``: arrays named as the
model's inputs (``pixels``) or ``input/<name>``, all with the same number of rows (first
dimension), and optionally ``expected/<output>`` arrays; ``broadcast/<input>`` arrays (any
shape the model takes: a scalar sample rate, a recurrent state) are given once and fed
unchanged with every row (devices then run the rows one at a time), and ``tolerance/<output>``
(a scalar) is the max abs error that output may show on a device (compressed releases carry
the ones measured on the winner). ``normalize`` checks names, dtypes and
shapes against the registered signature (``InvalidInputError`` naming the array and the shapes),
computes the missing expected outputs by running the model in ONNX Runtime, and writes the
normalized ``.npz`` (``input/<name>`` and ``expected/<output>``, sorted, fixed timestamps, so the
same data gives the same digest) that devices check the release against.

Or the feeds layout (``edgefleet.common.feeds``): ``feedK/<input>`` (or ``feedK/input/<name>``)
and optional ``feedK/expected/<output>`` for feeds 0, 1, ..., each in the model's own shapes
(unbatched inputs, scalars, a different length per feed: no shared rows), ``tolerance/<output>``
outside the feeds; normalized to ``feedK/input/<name>`` and ``feedK/expected/<output>``, every
feed run on its own (``normalize_feeds``). A recurrent model's feeds may form one stream:
``carry/<IN>`` (a 0-d string array naming output ``OUT``, what ``--carry IN=OUT`` of a
compression writes) makes every feed after the first that leaves ``IN`` out take the previous
feed's output ``OUT``, here when the expectations are computed and on devices when they are
checked, so the golden data checks the whole stream.

Pure apart from ONNX Runtime, which runs in this process on the CPU. The controller calls
``normalize_isolated``: the whole normalization in a sandbox process (``sandbox``), so that a
user's model never runs in the controller itself.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from edgefleet.common import externaldata, feeds, wire
from edgefleet.common.errors import InvalidInputError
from edgefleet.common.types import TensorSpec
from edgefleet.controller.sandbox import Sandbox

Array = npt.NDArray[Any]
INPUT, EXPECTED = feeds.INPUT, feeds.EXPECTED  # the layout: edgefleet.common.feeds
BROADCAST, TOLERANCE = feeds.BROADCAST, feeds.TOLERANCE
MAX_GOLDEN_BYTES = 32 << 20


def read(data: bytes) -> dict[str, Array]:
    if len(data) > MAX_GOLDEN_BYTES:
        raise InvalidInputError(
            f"golden data of {len(data)} bytes is larger than the limit of {MAX_GOLDEN_BYTES}"
        )
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise InvalidInputError(f"golden data is not a readable .npz file: {exc}") from exc


def split(
    arrays: Mapping[str, Array], inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]
) -> tuple[dict[str, Array], dict[str, Array]]:
    """(inputs, expected outputs) by name; ``InvalidInputError`` for names that are neither.
    ``broadcast/`` and ``tolerance/`` arrays are left out (``extras`` reads them)."""
    input_names = {s.name for s in inputs}
    given: dict[str, Array] = {}
    expected: dict[str, Array] = {}
    for key, value in arrays.items():
        if key.startswith(EXPECTED):
            expected[key.removeprefix(EXPECTED)] = value
            continue
        if key.startswith((BROADCAST, TOLERANCE)):
            continue
        name = key.removeprefix(INPUT)
        if key == name and name not in input_names:
            raise InvalidInputError(
                f"golden array {key!r} is not an input of the model "
                f"({wire.describe_specs(inputs)}); name arrays after the inputs, or "
                "input/<name> and expected/<output>"
            )
        if name in given:
            raise InvalidInputError(f"golden input {name!r} is given twice")
        given[name] = value
    for name in given:
        if name not in input_names:
            raise InvalidInputError(
                f"golden input {name!r} is not an input of the model "
                f"({wire.describe_specs(inputs)})"
            )
    shared = {k.removeprefix(BROADCAST) for k in arrays if k.startswith(BROADCAST)}
    for spec in inputs:
        if spec.name not in given and spec.name not in shared:
            raise InvalidInputError(
                f"golden data lacks input {spec.name!r} (the model takes "
                f"{wire.describe_specs(inputs)})"
            )
    output_names = {s.name for s in outputs}
    for name in expected:
        if name not in output_names:
            raise InvalidInputError(
                f"golden expected output {name!r} is not an output of the model "
                f"({', '.join(s.name for s in outputs)})"
            )
    return given, expected


def extras(
    arrays: Mapping[str, Array], inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]
) -> tuple[dict[str, Array], dict[str, float]]:
    """(broadcast inputs, per-output tolerances), checked against the signature."""
    by_name = {s.name: s for s in inputs}
    output_names = {s.name for s in outputs}
    shared: dict[str, Array] = {}
    tolerances: dict[str, float] = {}
    for key, value in arrays.items():
        if key.startswith(BROADCAST):
            name = key.removeprefix(BROADCAST)
            spec = by_name.get(name)
            if spec is None:
                raise InvalidInputError(
                    f"golden array {key!r} is not an input of the model "
                    f"({wire.describe_specs(inputs)})"
                )
            _check_whole("broadcast input", value, spec, " (given once, the whole input)")
            shared[name] = value
        elif key.startswith(TOLERANCE):
            name = key.removeprefix(TOLERANCE)
            if name not in output_names or value.ndim != 0 or value.dtype.kind != "f":
                raise InvalidInputError(
                    f"golden {key!r} must be a float scalar named after an output "
                    f"({', '.join(sorted(output_names))})"
                )
            if not (np.isfinite(value) and float(value) >= 0):
                raise InvalidInputError(f"golden {key!r} must be finite and >= 0, got {value}")
            tolerances[name] = float(value)
    return shared, tolerances


def _numeric(dtype: str) -> bool:
    try:
        return np.dtype(dtype).kind in "biufc"
    except TypeError:
        return False


def check(what: str, a: Array, spec: TensorSpec, *, rows: int) -> None:
    """``a`` must be ``spec``'s dtype and shape, with ``rows`` rows (the batch dimension may be
    fixed at 1 in the model: devices then run the rows one at a time)."""
    got = TensorSpec(spec.name, a.dtype.name, tuple(a.shape))
    if _numeric(spec.dtype) and a.dtype != np.dtype(spec.dtype):
        raise InvalidInputError(
            f"golden {what} {spec.name!r} has dtype {a.dtype.name} ({got.describe()}); "
            f"the model has {spec.describe()}"
        )
    if not spec.shape:
        return
    fits = a.ndim == len(spec.shape) and all(
        d < 0 or n == d for n, d in zip(a.shape[1:], spec.shape[1:], strict=True)
    )
    first = spec.shape[0] if a.ndim else 0
    if not fits or first not in (-1, 1, rows):
        raise InvalidInputError(
            f"golden {what} {spec.name!r} has shape {list(a.shape)}; the model has "
            f"{spec.describe()} (the first dimension counts the golden rows)"
        )
    if a.shape[0] != rows:
        raise InvalidInputError(
            f"golden arrays disagree on the number of rows: {spec.name!r} has {a.shape[0]}, "
            f"the first input has {rows}"
        )


def compute(
    model: bytes,
    given: Mapping[str, Array],
    names: Sequence[str],
    shared: Mapping[str, Array] | None = None,
) -> dict[str, Array]:
    """Outputs ``names`` of ``model`` for ``given`` (one run, or row by row when it must: a
    model fixed at batch 1, or ``shared`` broadcast inputs fed with every row), as devices run
    it (``edgefleet.agent.checking.run_golden``)."""
    shared = dict(shared or {})
    if not names:
        return {}
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        rows = next(iter(given.values())).shape[0]
        firsts = [i.shape[0] for i in session.get_inputs() if i.shape and i.name not in shared]
        one_at_a_time = rows > 1 and (
            bool(shared) or (bool(firsts) and all(isinstance(d, int) and d == 1 for d in firsts))
        )
        feeds = (
            [{k: v[i : i + 1] for k, v in given.items()} | shared for i in range(rows)]
            if one_at_a_time
            else [dict(given) | shared]
        )
        runs = [session.run(list(names), feed) for feed in feeds]
    except Exception as exc:  # ORT raises its own classes, all plain Exceptions
        raise InvalidInputError(f"the model fails on the golden inputs: {exc}") from exc
    return {name: np.concatenate([np.asarray(r[i]) for r in runs]) for i, name in enumerate(names)}


def normalize(
    data: bytes, *, model: bytes, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]
) -> bytes:
    """Checked, completed golden data as the normalized ``.npz`` bytes devices receive."""
    arrays = read(data)
    if feeds.is_feeds(arrays):
        return normalize_feeds(arrays, model=model, inputs=inputs, outputs=outputs)
    given, expected = split(arrays, inputs, outputs)
    shared, tolerances = extras(arrays, inputs, outputs)
    per_row = [s for s in inputs if s.name not in shared]
    if not per_row:
        raise InvalidInputError("golden data needs at least one input with rows (not broadcast)")
    first = given[per_row[0].name]
    rows = int(first.shape[0]) if first.ndim else 0
    if rows < 1:
        raise InvalidInputError("golden data needs at least one row")
    for spec in per_row:
        check("input", given[spec.name], spec, rows=rows)
    by_name = {s.name: s for s in outputs}
    for name, value in expected.items():
        if shared:  # rows run one at a time: outputs are the runs' outputs joined on axis 0
            spec = by_name[name]
            if spec.shape and value.ndim != len(spec.shape):
                raise InvalidInputError(
                    f"golden expected output {name!r} has shape {list(value.shape)}; the model "
                    f"has {spec.describe()}"
                )
            continue
        check("expected output", value, by_name[name], rows=rows)
    missing = [s.name for s in outputs if s.name not in expected and _numeric(s.dtype)]
    computed = compute(model, given, missing, shared)
    for name, value in computed.items():
        if value.dtype.kind in "fc" and not np.all(np.isfinite(value)):
            raise InvalidInputError(
                f"the model outputs NaN or infinity in {name!r} for the golden inputs; devices "
                "would refuse the release"
            )
    out = {f"{INPUT}{k}": v for k, v in given.items()}
    out |= {f"{BROADCAST}{k}": v for k, v in shared.items()}
    out |= {f"{EXPECTED}{k}": v for k, v in (expected | computed).items()}
    out |= {f"{TOLERANCE}{k}": np.asarray(v, np.float64) for k, v in tolerances.items()}
    return to_npz(out)


def normalize_feeds(
    arrays: Mapping[str, Array],
    *,
    model: bytes,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
) -> bytes:
    """``normalize`` for the feeds layout: each feed checked against the signature whole (no
    rows), its missing expected outputs computed by running it alone."""
    try:
        steps, rest = feeds.split(arrays)
    except feeds.FeedsError as exc:
        raise InvalidInputError(f"golden data: {exc}") from exc
    outside = [k for k in rest if not k.startswith((TOLERANCE, feeds.CARRY))]
    if outside:
        raise InvalidInputError(
            f"golden data in the feeds layout holds arrays outside any feed: {sorted(outside)} "
            "(only tolerance/<output> and carry/<input> may be)"
        )
    carry = _carry(rest, steps[0], inputs, outputs)
    _, tolerances = extras(
        {k: v for k, v in rest.items() if k.startswith(TOLERANCE)}, inputs, outputs
    )
    by_name = {s.name: s for s in outputs}
    out: dict[str, Array] = {}
    numeric = [s.name for s in outputs if _numeric(s.dtype)]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own classes, all plain Exceptions
        raise InvalidInputError(f"the model does not load: {exc}") from exc
    every = [o.name for o in session.get_outputs()]
    last: dict[str, Array] = {}  # the previous feed's outputs, for carried inputs
    for i, step in enumerate(steps):
        carried = {
            inp: last[out]
            for inp, out in carry
            if i and inp not in step and f"{INPUT}{inp}" not in step
        }
        given, expected = split(step | carried, inputs, outputs)
        for spec in inputs:
            _check_whole(f"feed{i} input", given[spec.name], spec)
        for name, value in expected.items():
            _check_whole(f"feed{i} expected output", value, by_name[name])
        missing = [name for name in numeric if name not in expected]
        wanted = every if carry else missing
        try:
            runs = session.run(wanted, dict(given)) if wanted else []
        except Exception as exc:  # ORT raises its own classes, all plain Exceptions
            raise InvalidInputError(f"the model fails on golden feed{i}: {exc}") from exc
        last = {name: np.asarray(r) for name, r in zip(wanted, runs, strict=True)}
        computed = {name: last[name] for name in missing}
        for name, value in computed.items():
            if value.dtype.kind in "fc" and not np.all(np.isfinite(value)):
                raise InvalidInputError(
                    f"the model outputs NaN or infinity in {name!r} for golden feed{i}; "
                    "devices would refuse the release"
                )
        out |= {feeds.key(i, f"{INPUT}{k}"): v for k, v in given.items() if k not in carried}
        out |= {feeds.key(i, f"{EXPECTED}{k}"): v for k, v in (expected | computed).items()}
    out |= {f"{TOLERANCE}{k}": np.asarray(v, np.float64) for k, v in tolerances.items()}
    out |= feeds.carry_arrays(carry)
    return to_npz(out)


def _carry(
    rest: Mapping[str, Array],
    first: Mapping[str, Array],
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
) -> tuple[tuple[str, str], ...]:
    """The ``carry/<IN>`` pairs of golden feeds, checked against the signature."""
    try:
        carry = feeds.read_carry(rest)
    except feeds.FeedsError as exc:
        raise InvalidInputError(f"golden data: {exc}") from exc
    input_names, output_names = {s.name for s in inputs}, {s.name for s in outputs}
    for inp, out in carry:
        if inp not in input_names or out not in output_names:
            raise InvalidInputError(
                f"golden carry/{inp} = {out!r}: {inp!r} must be an input "
                f"({wire.describe_specs(inputs)}) and {out!r} an output "
                f"({', '.join(sorted(output_names))})"
            )
        if inp not in first and f"{INPUT}{inp}" not in first:
            raise InvalidInputError(
                f"golden feed0 must give the initial value of the carried input {inp!r}"
            )
    return carry


def _check_whole(what: str, a: Array, spec: TensorSpec, note: str = "") -> None:
    """``a`` must be ``spec``'s dtype and its whole shape (dynamic dimensions any size);
    ``note`` ends the error's line."""
    fits = not spec.shape or (
        a.ndim == len(spec.shape)
        and all(d < 0 or n == d for n, d in zip(a.shape, spec.shape, strict=True))
    )
    if not fits or (_numeric(spec.dtype) and a.dtype != np.dtype(spec.dtype)):
        raise InvalidInputError(
            f"golden {what} {spec.name!r} is {a.dtype.name}{list(a.shape)}; the model has "
            f"{spec.describe()}{note}"
        )


def _normalize_embedded(
    data: bytes, *, model: bytes, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]
) -> bytes:
    # A model registered before external data was refused must not run either.
    externaldata.refuse_external(model)
    return normalize(data, model=model, inputs=inputs, outputs=outputs)


def normalize_isolated(
    sandbox: Sandbox,
    data: bytes,
    *,
    model: bytes,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
) -> bytes:
    """``normalize`` in a sandbox process: the model runs there, never in the controller."""
    return sandbox.call(
        _normalize_embedded,
        data,
        model=model,
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        what="golden outputs",
    )


def to_npz(arrays: Mapping[str, Array]) -> bytes:
    """An ``.npz`` that depends on the arrays only: sorted members, a fixed timestamp."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with z.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(
                    f, np.asarray(arrays[name], order="C"), allow_pickle=False
                )
    return buf.getvalue()


def summary(data: bytes) -> str:
    """``64 rows; inputs pixels; expected label, probabilities`` for logs."""
    arrays = read(data)
    if feeds.is_feeds(arrays):
        steps, _ = feeds.split(arrays)
        first = steps[0]
        ins = ", ".join(sorted(k.removeprefix(INPUT) for k in first if k.startswith(INPUT)))
        outs = ", ".join(sorted(k.removeprefix(EXPECTED) for k in first if k.startswith(EXPECTED)))
        return f"{len(steps)} feeds; inputs {ins}; expected {outs or 'none'}"
    names = sorted(arrays)
    rows = next(v for k, v in arrays.items() if k.startswith(INPUT)).shape[0]
    ins = ", ".join(n.removeprefix(INPUT) for n in names if n.startswith(INPUT))
    outs = ", ".join(n.removeprefix(EXPECTED) for n in names if n.startswith(EXPECTED))
    return f"{rows} rows; inputs {ins}; expected {outs or 'none'}"
