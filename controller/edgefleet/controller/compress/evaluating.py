"""How good a compressed model still is: accuracy against labels, or fidelity to the original.

With labels (``.npz`` with the model's input names plus ``labels``) the metric is top-1
accuracy. Without them the compressed model is compared with the original on the same inputs.
The metric is chosen (``metric``: ``top1``, ``cosine``, ``mse``, ``max-abs``, optionally for one
output, ``OUTPUT=KIND``) or follows the output (``auto``): class scores (a 2-D float output made
by Softmax/LogSoftmax, read by an ArgMax, or whose rows are probabilities) and integer labels ->
top-1 agreement; one value per sample -> max abs error; anything else (embeddings, feature
maps) -> mean cosine similarity. Every metric becomes a ``drop`` in points (0..100, lower is
better) so one ``max_drop`` gates them all:

==========  =========================================================================
top1        100 x (share of samples whose top-1 class changed); accuracy: points lost
cosine      100 x (1 - mean cosine similarity per sample): drop 1 = cosine >= 0.99
mse         100 x MSE / mean square of the original's output (normalised MSE, percent)
max-abs     100 x max abs error / max abs value of the original's output
==========  =========================================================================

Eval data is an ``.npz``: one array per model input, samples along the first axis, all with
the same count; an array named ``broadcast/<input>`` (and any 0-d array, a scalar input such as
a sample rate) is given once and fed unchanged with every sample (recurrent state, settings).
A model with broadcast inputs is run one sample per feed.
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
BROADCAST = "broadcast/"
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
    MSE = "mse"
    MAX_ABS_ERROR = "max-abs-error"


METRIC_NAMES = {
    "top1": Metric.TOP1_AGREEMENT,
    "cosine": Metric.COSINE,
    "mse": Metric.MSE,
    "max-abs": Metric.MAX_ABS_ERROR,
}


@dataclass(frozen=True)
class MetricChoice:
    """``--metric``: a kind (None = auto) and the output it reads ("" = the primary one)."""

    kind: Metric | None = None
    output: str = ""

    def __str__(self) -> str:
        kind = next((k for k, v in METRIC_NAMES.items() if v is self.kind), "auto")
        return f"{self.output}={kind}" if self.output else kind


def parse_metric(text: str) -> MetricChoice:
    """``auto`` (or ""), ``top1|cosine|mse|max-abs``, or ``OUTPUT=KIND``."""
    output, _, kind = text.strip().rpartition("=")
    kind = kind.strip() or "auto"
    if kind == "auto":
        return MetricChoice(None, output.strip())
    if kind not in METRIC_NAMES:
        choices = ", ".join(["auto", *METRIC_NAMES])
        raise InvalidInputError(f"unknown metric {kind!r}: choose one of {choices}")
    return MetricChoice(METRIC_NAMES[kind], output.strip())


@dataclass(frozen=True)
class EvalSet:
    """Inputs as a list of feeds (each with a leading batch axis), labels for all samples.

    ``broadcast`` names the inputs that are the same array in every feed (not sliced)."""

    batches: tuple[dict[str, npt.NDArray[Any]], ...]
    labels: npt.NDArray[np.int64] | None = None
    broadcast: frozenset[str] = frozenset()

    @classmethod
    def from_arrays(
        cls,
        inputs: Mapping[str, npt.NDArray[Any]],
        labels: npt.NDArray[Any] | None = None,
        *,
        batch_size: int = 256,
        broadcast: Mapping[str, npt.NDArray[Any]] | None = None,
    ) -> EvalSet:
        shared = dict(broadcast or {})
        inputs = dict(inputs)
        for name in [k for k, a in inputs.items() if np.ndim(a) == 0]:
            shared[name] = inputs.pop(name)  # a scalar input is the same for every sample
        if shared:
            batch_size = 1
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
            {k: np.ascontiguousarray(a[i : i + batch_size]) for k, a in inputs.items()} | shared
            for i in range(0, n, batch_size)
        )
        return cls(
            batches,
            None if labels is None else np.asarray(labels, dtype=np.int64),
            frozenset(shared),
        )

    def rows(self, batch: Mapping[str, npt.NDArray[Any]]) -> int:
        """Samples in one of the batches (counted on an input that is not broadcast)."""
        name = next(k for k in batch if k not in self.broadcast)
        return len(batch[name])

    @property
    def size(self) -> int:
        return sum(self.rows(b) for b in self.batches)

    def head(self, count: int) -> EvalSet:
        """The first ``count`` samples (whole batches where they fit)."""
        out: list[dict[str, npt.NDArray[Any]]] = []
        left = count
        for batch in self.batches:
            if left <= 0:
                break
            out.append({k: v if k in self.broadcast else v[:left] for k, v in batch.items()})
            left -= self.rows(batch)
        labels = None if self.labels is None else self.labels[:count]
        return EvalSet(tuple(out), labels, self.broadcast)


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
    single-input model), ``broadcast/<input>`` arrays given once, plus optional ``labels``."""
    raw = source.read_bytes() if isinstance(source, Path) else source
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"eval data is not a readable .npz: {exc}") from exc
    labels = arrays.pop(LABELS_KEY, None)
    shared = {
        k.removeprefix(BROADCAST): arrays.pop(k) for k in list(arrays) if k.startswith(BROADCAST)
    }
    names = [v.name for v in graphs.graph_inputs(graphs.load(model))]
    if len(names) == 1 and names[0] not in arrays and set(arrays) == {"inputs"}:
        arrays = {names[0]: arrays["inputs"]}
    if not arrays:
        raise InvalidInputError(
            f"empty eval set: no per-sample input (only broadcast {sorted(shared)})"
        )
    eval_set = EvalSet.from_arrays(arrays, labels, batch_size=batch_size, broadcast=shared)
    validate(model, eval_set.batches, what="eval")
    return eval_set


def validate(model: bytes, feeds: Sequence[Feed], *, what: str) -> None:
    """Names, dtypes, ranks and fixed dimensions of every feed must fit the model's inputs."""
    if not feeds or all(any(np.ndim(v) and len(v) == 0 for v in f.values()) for f in feeds):
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


def reference(
    model: bytes, eval_set: EvalSet, *, metric: MetricChoice = MetricChoice()
) -> Reference:
    """The original's outputs and score; ``metric`` picks the kind and output (default: auto,
    accuracy when there are labels and the kind is auto or top1)."""
    validate(model, eval_set.batches, what="eval")
    sess = graphs.session(model)
    names = tuple(o.name for o in sess.get_outputs())
    outputs = tuple(list(sess.run(None, dict(b))) for b in eval_set.batches)
    proto = graphs.load(model)
    if metric.output:
        if metric.output not in names:
            raise InvalidInputError(
                f"--metric names output {metric.output!r}; the model's outputs are {list(names)}"
            )
        primary = names.index(metric.output)
    else:
        primary = _primary(outputs[0], names, proto)
    kind = metric.kind
    if eval_set.labels is not None and kind in (None, Metric.TOP1_AGREEMENT):
        acc = _accuracy(_predictions(outputs, primary), eval_set.labels)
        return Reference(outputs, names, Score(Metric.ACCURACY, acc, 0.0), primary)
    kind = kind or _fidelity_metric(outputs[0][primary], names[primary], proto)
    value = 0.0 if kind in (Metric.MAX_ABS_ERROR, Metric.MSE) else 1.0
    return Reference(outputs, names, Score(kind, value, 0.0), primary)


def head(eval_set: EvalSet, ref: Reference, count: int) -> tuple[EvalSet, Reference]:
    """The first ``count`` samples and the original's outputs on them (for a quick screen)."""
    part = eval_set.head(count)
    outputs = []
    for batch, full, outs in zip(part.batches, eval_set.batches, ref.outputs, strict=False):
        rows, whole = part.rows(batch), eval_set.rows(full)
        outputs.append(outs if rows == whole else [o[:rows] for o in outs])
    own = ref.score
    if own.metric is Metric.ACCURACY and part.labels is not None:  # the original's, on these
        own = Score(own.metric, _accuracy(_predictions(outputs, ref.primary), part.labels), 0.0)
    return part, Reference(tuple(outputs), ref.output_names, own, ref.primary)


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
    if metric is Metric.MSE:
        err2 = sum(float(np.square(g - w).sum()) for g, w in pairs)
        power = sum(float(np.square(w).sum()) for _, w in pairs)
        count = sum(w.size for _, w in pairs)
        return Score(metric, err2 / max(count, 1), 100 * err2 / max(power, 1e-24))
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


def _primary(outputs: Sequence[npt.NDArray[Any]], names: Sequence[str], proto: Any) -> int:
    """The output to judge: class scores first, else a label vector, else the first float one."""
    for i, out in enumerate(outputs):
        if _class_scores(out, names[i], proto):
            return i
    for i, out in enumerate(outputs):
        if out.ndim == 1 and np.issubdtype(out.dtype, np.integer):
            return i
    for i, out in enumerate(outputs):
        if np.issubdtype(out.dtype, np.floating):
            return i
    return 0


def _class_scores(out: npt.NDArray[Any], name: str, proto: Any) -> bool:
    """A 2-D float [N, K>1] output with class-score semantics: made by Softmax/LogSoftmax, read
    by an ArgMax (itself or the tensor it was computed from), or rows that are probabilities."""
    if not (out.ndim == 2 and out.shape[1] > 1 and np.issubdtype(out.dtype, np.floating)):
        return False
    producer = next((n for n in proto.graph.node if name in n.output), None)
    if producer is not None and producer.op_type in ("Softmax", "LogSoftmax"):
        return True
    sources = {name, *(producer.input if producer is not None else ())}
    if any(n.op_type == "ArgMax" and set(n.input) & sources for n in proto.graph.node):
        return True
    rows = out.astype(np.float64)
    return bool(np.all(rows >= 0) and np.allclose(rows.sum(axis=1), 1.0, atol=1e-3))


def _fidelity_metric(out: npt.NDArray[Any], name: str, proto: Any) -> Metric:
    if np.issubdtype(out.dtype, np.integer) or _class_scores(out, name, proto):
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
