"""How good a compressed model still is: accuracy against labels, or fidelity to the original.

With labels (``.npz`` with the model's input names plus ``labels``) the metric is top-1
accuracy. Without them the compressed model is compared with the original on the same inputs,
and the output's type picks the metric: class scores [N, K>1] -> top-1 agreement, one value
per sample -> max abs error relative to the original's range, anything else -> mean cosine
similarity. Every metric is turned into a ``drop`` in points (0..100, lower is better) so one
``max_drop`` gates them all.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet.common.errors import InvalidInputError

from . import graphs
from .graphs import Feed

LABELS_KEY = "labels"
_NP_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(bool)": np.bool_,
}


class Metric(StrEnum):
    ACCURACY = "accuracy"
    TOP1_AGREEMENT = "top1-agreement"
    COSINE = "cosine-similarity"
    MAX_ABS_ERROR = "max-abs-error"


@dataclass(frozen=True)
class EvalSet:
    """Inputs as a list of feeds (each with a leading batch axis), labels for all samples."""

    batches: tuple[dict[str, npt.NDArray[Any]], ...]
    labels: npt.NDArray[np.int64] | None = None

    @classmethod
    def from_arrays(
        cls,
        inputs: Mapping[str, npt.NDArray[Any]],
        labels: npt.NDArray[Any] | None = None,
        *,
        batch_size: int = 256,
    ) -> EvalSet:
        counts = {name: len(a) if np.ndim(a) else 0 for name, a in inputs.items()}
        n = max(counts.values(), default=0)
        if n == 0:
            raise InvalidInputError(f"empty eval set: inputs {counts or '{}'} hold no samples")
        for name, count in counts.items():
            if count != n:
                raise InvalidInputError(
                    f"eval input {name!r} has {count} samples, others have {n}: {_shapes(inputs)}"
                )
        if labels is not None and len(labels) != n:
            raise InvalidInputError(f"{len(labels)} labels for {n} samples: {_shapes(inputs)}")
        batches = tuple(
            {k: np.ascontiguousarray(a[i : i + batch_size]) for k, a in inputs.items()}
            for i in range(0, n, batch_size)
        )
        return cls(batches, None if labels is None else np.asarray(labels, dtype=np.int64))

    @property
    def size(self) -> int:
        return sum(len(next(iter(b.values()))) for b in self.batches)

    def head(self, count: int) -> EvalSet:
        """The first ``count`` samples (whole batches where they fit)."""
        out: list[dict[str, npt.NDArray[Any]]] = []
        left = count
        for batch in self.batches:
            if left <= 0:
                break
            out.append({k: v[:left] for k, v in batch.items()})
            left -= len(next(iter(batch.values())))
        labels = None if self.labels is None else self.labels[:count]
        return EvalSet(tuple(out), labels)


@dataclass(frozen=True)
class Score:
    metric: Metric
    value: float  # accuracy/agreement/cosine in 0..1; max-abs-error in output units
    drop: float  # points lost against the original, 0..100; <= max_drop passes


@dataclass(frozen=True)
class Reference:
    """The original model's outputs on the eval set, and its own score."""

    outputs: tuple[list[npt.NDArray[Any]], ...]
    output_names: tuple[str, ...]
    score: Score
    primary: int  # index of the output the metric reads


def load_eval_set(source: bytes | Path, *, model: bytes, batch_size: int = 256) -> EvalSet:
    """Read an ``.npz``: arrays named after the model's inputs (or one ``inputs`` array for a
    single-input model) plus optional ``labels``."""
    raw = source.read_bytes() if isinstance(source, Path) else source
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"eval data is not a readable .npz: {exc}") from exc
    labels = arrays.pop(LABELS_KEY, None)
    names = [v.name for v in graphs.graph_inputs(graphs.load(model))]
    if len(names) == 1 and names[0] not in arrays and set(arrays) == {"inputs"}:
        arrays = {names[0]: arrays["inputs"]}
    eval_set = EvalSet.from_arrays(arrays, labels, batch_size=batch_size)
    validate(model, eval_set.batches, what="eval")
    return eval_set


def validate(model: bytes, feeds: Sequence[Feed], *, what: str) -> None:
    """Names, dtypes, ranks and fixed dimensions of every feed must fit the model's inputs."""
    if not feeds or all(len(next(iter(f.values()), ())) == 0 for f in feeds):
        raise InvalidInputError(f"empty {what} set: no samples")
    sess = graphs.session(model)
    wanted = {i.name: i for i in sess.get_inputs()}
    for feed in feeds:
        if set(feed) != set(wanted):
            raise InvalidInputError(
                f"{what} data names inputs {sorted(feed)}, the model takes {sorted(wanted)}"
            )
        for name, value in feed.items():
            spec = wanted[name]
            dims = list(spec.shape)
            ok = value.ndim == len(dims) and all(
                not isinstance(d, int) or d == s for d, s in zip(dims, value.shape, strict=False)
            )
            dtype = _NP_DTYPES.get(spec.type)
            if not ok or (dtype is not None and value.dtype != dtype):
                raise InvalidInputError(
                    f"{what} input {name!r} is {value.dtype}{list(value.shape)}, "
                    f"the model wants {spec.type}{dims}"
                )


def reference(model: bytes, eval_set: EvalSet) -> Reference:
    validate(model, eval_set.batches, what="eval")
    sess = graphs.session(model)
    names = tuple(o.name for o in sess.get_outputs())
    outputs = tuple(list(sess.run(None, dict(b))) for b in eval_set.batches)
    primary = _primary(outputs[0])
    if eval_set.labels is not None:
        acc = _accuracy(_predictions(outputs, primary), eval_set.labels)
        return Reference(outputs, names, Score(Metric.ACCURACY, acc, 0.0), primary)
    metric = _fidelity_metric(outputs[0][primary])
    value = 0.0 if metric is Metric.MAX_ABS_ERROR else 1.0
    return Reference(outputs, names, Score(metric, value, 0.0), primary)


def score(model: bytes, eval_set: EvalSet, ref: Reference) -> Score:
    sess = graphs.session(model)
    outputs = tuple(list(sess.run(list(ref.output_names), dict(b))) for b in eval_set.batches)
    metric = ref.score.metric
    if metric is Metric.ACCURACY:
        assert eval_set.labels is not None
        acc = _accuracy(_predictions(outputs, ref.primary), eval_set.labels)
        return Score(metric, acc, max(0.0, (ref.score.value - acc) * 100))
    # Batches may differ in shape (sequences of varying length): compare batch by batch.
    pairs = [
        (g[ref.primary].astype(np.float64), w[ref.primary].astype(np.float64))
        for g, w in zip(outputs, ref.outputs, strict=True)
    ]
    if metric is Metric.TOP1_AGREEMENT:
        agree = float(np.concatenate([_top1(g) == _top1(w) for g, w in pairs]).mean())
        return Score(metric, agree, (1 - agree) * 100)
    if metric is Metric.MAX_ABS_ERROR:
        err = max(float(np.abs(g - w).max()) for g, w in pairs)
        peak = max(float(np.abs(w).max()) for _, w in pairs)
        return Score(metric, err, 100 * err / max(peak, 1e-12))
    cosines = []
    for g, w in pairs:
        g2, w2 = g.reshape(len(g), -1), w.reshape(len(w), -1)
        norms = np.linalg.norm(g2, axis=1) * np.linalg.norm(w2, axis=1)
        cosines.append((g2 * w2).sum(axis=1) / np.maximum(norms, 1e-12))
    cos = float(np.concatenate(cosines).mean())
    return Score(metric, cos, max(0.0, (1 - cos) * 100))


def _primary(outputs: Sequence[npt.NDArray[Any]]) -> int:
    """The output to judge: a class-score matrix [N, K>1] first, else a label vector, else 0."""
    for i, out in enumerate(outputs):
        if out.ndim == 2 and out.shape[1] > 1 and np.issubdtype(out.dtype, np.floating):
            return i
    for i, out in enumerate(outputs):
        if out.ndim == 1 and np.issubdtype(out.dtype, np.integer):
            return i
    return 0


def _fidelity_metric(out: npt.NDArray[Any]) -> Metric:
    if (out.ndim == 2 and out.shape[1] > 1 and np.issubdtype(out.dtype, np.floating)) or (
        np.issubdtype(out.dtype, np.integer)
    ):
        return Metric.TOP1_AGREEMENT
    per_sample = int(np.prod(out.shape[1:])) if out.ndim > 1 else 1
    return Metric.MAX_ABS_ERROR if per_sample == 1 else Metric.COSINE


def _top1(values: npt.NDArray[Any]) -> npt.NDArray[Any]:
    return values.argmax(axis=1) if values.ndim == 2 else values


def _predictions(outputs: Sequence[list[npt.NDArray[Any]]], primary: int) -> npt.NDArray[Any]:
    return np.concatenate([_top1(o[primary]) for o in outputs])


def _accuracy(pred: npt.NDArray[Any], labels: npt.NDArray[np.int64]) -> float:
    return float((pred.astype(np.int64) == labels).mean())


def _shapes(inputs: Mapping[str, npt.NDArray[Any]]) -> str:
    return ", ".join(f"{k}{list(np.shape(v))}" for k, v in inputs.items())
