"""How good a compressed model still is: accuracy against labels, or fidelity to the original.

With labels (``.npz`` with the model's input names plus ``labels``) the metric is top-1
accuracy. Without them the compressed model is compared with the original on the same inputs.
The metric is chosen per output (``metric``: ``KIND[:ARG]`` for the primary output, or
``OUTPUT=KIND[:ARG]``, several separated by commas) or follows the output (``auto``):

* class scores (a 2-D float [N, C] output made by Softmax/LogSoftmax, read by an ArgMax, or
  whose rows are probabilities) and integer labels -> top-1 agreement (accuracy with labels);
* a probability map (4-D float [N, 1, H, W], every value in [0, 1]) -> IoU above 0.5;
* sequences of class scores (3-D float [N, T, C] or [T, N, C] with class-score semantics on
  the last axis: Softmax/LogSoftmax, an ArgMax, probability or log-probability rows) ->
  sequence agreement;
* one value per sample -> max abs error;
* anything else (embeddings, hidden states, feature maps) -> mean cosine similarity.

The primary output (``OUTPUT`` not given) is the first with class scores, else a label vector,
else the first float one. Each judged output's metric becomes a ``drop`` in points (0..100,
lower is better); a candidate's drop is the worst of them, so one ``max_drop`` gates them all:

==========  =========================================================================
top1        100 x (share of samples whose top-1 class changed); accuracy: points lost
cosine      100 x (1 - mean cosine similarity per sample): drop 1 = cosine >= 0.99
mse         100 x MSE / mean square of the original's output (normalised MSE, percent)
max-abs     100 x max abs error / max abs value of the original's output
iou[:T]     100 x (1 - IoU): both outputs binarised at ``> T`` (default 0.5), intersection
            over union over every element of the eval set (1 when both are empty)
seq[:ctc]   100 x (share of sequences whose argmax sequence differs), argmax over the last
            axis; ``ctc``: repeats collapsed and blank (class 0) dropped before comparing
module      a user's ``score(reference, candidate) -> [0, 1]`` (``metric_hook``, run
            confined): 100 x (its score of the original against itself - its score)
==========  =========================================================================

Eval data is an ``.npz`` in one of the two layouts ``edgefleet.common.feeds`` defines:
batched (one array per model input, samples along the first axis, all with the same count; an
array named ``broadcast/<input>``, and any 0-d array, is given once and fed unchanged with
every sample; a model with broadcast inputs is run one sample per feed), or a list of feeds
(``feedK/<input>``, optional ``feedK/labels``: each feed run as it is). ``carry`` (``--carry
IN=OUT``) runs the feeds in order as one stream: the original's ``OUT`` of one feed is ``IN``
of the next when the set is loaded (so calibration and timing see real states), and each
candidate is scored on its own stream (its ``OUT`` fed back), over all the stream's outputs.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from edgefleet.common import feeds as feeds_layout
from edgefleet.common.errors import InvalidInputError

from . import graphs
from .graphs import Feed

LABELS_KEY = feeds_layout.LABELS  # the layout: edgefleet.common.feeds
BROADCAST = feeds_layout.BROADCAST
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
    IOU = "iou"
    SEQUENCE = "sequence-agreement"
    MODULE = "metric-module"


METRIC_NAMES = {
    "top1": Metric.TOP1_AGREEMENT,
    "cosine": Metric.COSINE,
    "mse": Metric.MSE,
    "max-abs": Metric.MAX_ABS_ERROR,
    "iou": Metric.IOU,
    "seq": Metric.SEQUENCE,
}
DEFAULT_IOU_THRESHOLD = 0.5
CTC_BLANK = 0


class MetricHook(Protocol):
    """A user's metric over all outputs: a score in [0, 1], higher is better."""

    def __call__(
        self, reference: Mapping[str, npt.NDArray[Any]], candidate: Mapping[str, npt.NDArray[Any]]
    ) -> float: ...


@dataclass(frozen=True)
class MetricChoice:
    """``--metric``: a kind (None = auto), the output it reads ("" = the primary one) and the
    kind's argument ("" = its default: IoU's threshold, ``ctc`` for sequences)."""

    kind: Metric | None = None
    output: str = ""
    arg: str = ""

    def __str__(self) -> str:
        kind = next((k for k, v in METRIC_NAMES.items() if v is self.kind), "auto")
        kind += f":{self.arg}" if self.arg else ""
        return f"{self.output}={kind}" if self.output else kind


def parse_metric(text: str) -> MetricChoice:
    """``auto`` (or ""), ``KIND[:ARG]`` (``top1|cosine|mse|max-abs|iou[:T]|seq[:ctc]``), or
    ``OUTPUT=KIND[:ARG]`` (an output name may itself hold ``:``, not ``=``)."""
    output, _, spec = text.strip().rpartition("=")
    kind, _, arg = spec.strip().partition(":")
    kind, arg, output = kind.strip() or "auto", arg.strip(), output.strip()
    if kind == "auto":
        if arg:
            raise InvalidInputError(f"metric auto takes no argument, got {arg!r}")
        return MetricChoice(None, output)
    if kind not in METRIC_NAMES:
        choices = ", ".join(["auto", *METRIC_NAMES])
        raise InvalidInputError(f"unknown metric {kind!r}: choose one of {choices}")
    metric = METRIC_NAMES[kind]
    if metric is Metric.IOU and arg:
        try:
            threshold = float(arg)
        except ValueError:
            threshold = math.nan
        if not math.isfinite(threshold):
            raise InvalidInputError(f"iou threshold must be a number, got {arg!r} (iou:0.5)")
    elif metric is Metric.SEQUENCE and arg not in ("", "ctc"):
        raise InvalidInputError(f"seq takes only 'ctc' (seq:ctc), got {arg!r}")
    elif arg and metric not in (Metric.IOU, Metric.SEQUENCE):
        raise InvalidInputError(f"metric {kind} takes no argument, got {arg!r}")
    return MetricChoice(metric, output, arg)


def parse_metrics(text: str) -> tuple[MetricChoice, ...]:
    """Comma-separated choices, at most one per output; "" = none given (auto)."""
    choices = tuple(parse_metric(part) for part in text.split(",") if part.strip())
    outputs = [c.output for c in choices]
    twice = sorted({o or "(primary)" for o in outputs if outputs.count(o) > 1})
    if twice:
        raise InvalidInputError(f"--metric names output(s) {', '.join(twice)} more than once")
    return choices


@dataclass(frozen=True)
class Judge:
    """One metric on one output (``output`` -1: the user's module, over all of them)."""

    output: int
    name: str
    kind: Metric
    arg: str = ""
    baseline: float = 1.0  # the original's own value (accuracy, the module's self-score)

    @property
    def label(self) -> str:
        """The metric as a report names it: ``iou>0.5``, ``sequence-agreement (ctc)``."""
        if self.kind is Metric.IOU:
            return f"iou>{_threshold(self.arg):g}"
        if self.kind is Metric.SEQUENCE and self.arg:
            return f"{self.kind} ({self.arg})"
        if self.kind is Metric.MODULE:
            return f"{self.kind} {self.arg}"
        return str(self.kind)


@dataclass(frozen=True)
class OutputScore:
    """One judged output's metric (its label), value and drop."""

    output: str
    metric: str
    value: float
    drop: float


@dataclass(frozen=True)
class EvalSet:
    """Inputs as a list of feeds (each with a leading batch axis), labels for all samples.

    ``broadcast`` names the inputs that are the same array in every feed (not sliced).
    ``carry``: (input, output) pairs fed from one feed's outputs to the next feed's inputs,
    except into the feeds in ``fresh`` (those start a new stream with their own inputs); the
    ``batches`` hold the original model's carried values. ``per_feed``: the feeds layout (each
    feed is one sample; ``head`` takes whole feeds)."""

    batches: tuple[dict[str, npt.NDArray[Any]], ...]
    labels: npt.NDArray[np.int64] | None = None
    broadcast: frozenset[str] = frozenset()
    carry: tuple[tuple[str, str], ...] = ()
    fresh: frozenset[int] = frozenset()
    per_feed: bool = False
    label_counts: tuple[int, ...] = ()  # feeds layout: labels per feed

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
        """Samples in one of the batches (counted on an input that is not broadcast; in the
        feeds layout the first dimension of the first input that has one, else 1)."""
        if self.per_feed:
            return next((len(v) for v in batch.values() if np.ndim(v)), 1)
        name = next(k for k in batch if k not in self.broadcast)
        return len(batch[name])

    @property
    def size(self) -> int:
        if self.per_feed:
            return len(self.batches)
        return sum(self.rows(b) for b in self.batches)

    def run(self, sess: Any, names: Sequence[str]) -> tuple[list[npt.NDArray[Any]], ...]:
        """``names`` of the outputs of ``sess`` on every feed in order, carrying ``carry``'s
        outputs into the next feed's inputs (so the outputs named must include them)."""
        outputs: list[list[npt.NDArray[Any]]] = []
        for i, batch in enumerate(self.batches):
            feed = dict(batch)
            if self.carry and i and i not in self.fresh:
                last = dict(zip(names, outputs[-1], strict=True))
                feed |= {inp: last[out] for inp, out in self.carry}
            outputs.append(list(sess.run(list(names), feed)))
        return tuple(outputs)

    def head(self, count: int) -> EvalSet:
        """The first ``count`` samples (whole batches where they fit; feeds: whole feeds)."""
        if self.per_feed:
            labels = None
            if self.labels is not None:
                labels = self.labels[: sum(self.label_counts[:count])]
            return replace(
                self,
                batches=self.batches[:count],
                labels=labels,
                label_counts=self.label_counts[:count],
            )
        out: list[dict[str, npt.NDArray[Any]]] = []
        left = count
        for batch in self.batches:
            if left <= 0:
                break
            out.append({k: v if k in self.broadcast else v[:left] for k, v in batch.items()})
            left -= self.rows(batch)
        labels = None if self.labels is None else self.labels[:count]
        return replace(self, batches=tuple(out), labels=labels)


@dataclass(frozen=True)
class Score:
    """The worst judged output's metric, value and drop, and every judged output's."""

    metric: Metric
    value: float  # accuracy/agreement/cosine/IoU in 0..1; max-abs-error in output units
    drop: float  # points lost against the original, 0..100; <= max_drop passes
    outputs: tuple[OutputScore, ...] = ()

    @property
    def label(self) -> str:
        """``metric`` as the report names it: one output's label, or the worst one's."""
        return self.outputs[0].metric if len(self.outputs) == 1 else str(self.metric)


@dataclass(frozen=True)
class Reference:
    """The original model's outputs on the eval set, and its own score."""

    outputs: tuple[list[npt.NDArray[Any]], ...]
    output_names: tuple[str, ...]
    score: Score
    primary: int  # index of the first output a metric reads (-1: only the user's module)
    judges: tuple[Judge, ...] = ()
    hook: MetricHook | None = None


def load_eval_set(
    source: bytes | Path,
    *,
    model: bytes,
    batch_size: int = 256,
    carry: Sequence[tuple[str, str]] = (),
) -> EvalSet:
    """Read an ``.npz``: arrays named after the model's inputs (or one ``inputs`` array for a
    single-input model), ``broadcast/<input>`` arrays given once, plus optional ``labels``; or
    ``feedK/<input>`` feeds (``edgefleet.common.feeds``). ``carry``: run the feeds as one
    stream (``EvalSet.carry``)."""
    raw = source.read_bytes() if isinstance(source, Path) else source
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"eval data is not a readable .npz: {exc}") from exc
    if feeds_layout.is_feeds(arrays):
        eval_set = _feeds_set(arrays, carry)
    else:
        eval_set = _batched_set(arrays, model, batch_size=1 if carry else batch_size)
        eval_set = replace(eval_set, carry=tuple(carry))
    if carry:
        eval_set = _carried(model, eval_set)
    validate(model, eval_set.batches, what="eval")
    return eval_set


def _feeds_set(arrays: Mapping[str, npt.NDArray[Any]], carry: Sequence[tuple[str, str]]) -> EvalSet:
    try:
        feeds, rest = feeds_layout.split(arrays)
    except feeds_layout.FeedsError as exc:
        raise InvalidInputError(f"eval data: {exc}") from exc
    if rest:
        raise InvalidInputError(
            f"eval data in the feeds layout holds arrays outside any feed: {sorted(rest)} "
            "(name every array feedK/<input> or feedK/labels)"
        )
    with_labels = [LABELS_KEY in f for f in feeds]
    if any(with_labels) and not all(with_labels):
        raise InvalidInputError("eval feeds: give feedK/labels in every feed or in none")
    labels = [np.atleast_1d(f.pop(LABELS_KEY)) for f in feeds] if all(with_labels) else []
    if any(not f for f in feeds):
        raise InvalidInputError("eval feeds: a feed holds no input")
    carried = {inp for inp, _ in carry}
    fresh = frozenset(i for i, f in enumerate(feeds) if i and carried & set(f))
    return EvalSet(
        tuple(feeds),
        np.concatenate(labels).astype(np.int64) if labels else None,
        carry=tuple(carry),
        fresh=fresh,
        per_feed=True,
        label_counts=tuple(len(x) for x in labels),
    )


def _carried(model: bytes, eval_set: EvalSet) -> EvalSet:
    """``eval_set`` with every carried input filled in from the original model's stream."""
    sess = graphs.session(model)
    ins = {i.name for i in sess.get_inputs()}
    outs = [o.name for o in sess.get_outputs()]
    for inp, out in eval_set.carry:
        if inp not in ins or out not in outs:
            raise InvalidInputError(
                f"--carry {inp}={out}: {inp!r} must be an input ({sorted(ins)}) and {out!r} an "
                f"output ({outs}) of the model"
            )
    if any(inp not in eval_set.batches[0] for inp, _ in eval_set.carry):
        raise InvalidInputError(
            "--carry: the first feed must give the initial value of every carried input "
            f"({', '.join(inp for inp, _ in eval_set.carry)})"
        )
    batches: list[dict[str, npt.NDArray[Any]]] = []
    last: dict[str, npt.NDArray[Any]] = {}
    try:
        for i, batch in enumerate(eval_set.batches):
            feed = dict(batch)
            if i and i not in eval_set.fresh:
                feed |= {inp: last[out] for inp, out in eval_set.carry}
            batches.append(feed)
            last = dict(zip(outs, sess.run(outs, feed), strict=True))
    except Exception as exc:  # ORT raises its own classes, all plain Exceptions
        raise InvalidInputError(f"the model fails on eval feed {len(batches) - 1}: {exc}") from exc
    return replace(eval_set, batches=tuple(batches))


def _batched_set(arrays: dict[str, npt.NDArray[Any]], model: bytes, *, batch_size: int) -> EvalSet:
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
    return EvalSet.from_arrays(arrays, labels, batch_size=batch_size, broadcast=shared)


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
    model: bytes,
    eval_set: EvalSet,
    *,
    metric: MetricChoice | Sequence[MetricChoice] = (),
    hook: MetricHook | None = None,
) -> Reference:
    """The original's outputs and score. ``metric`` picks the kind per output (default: auto;
    accuracy when there are labels and the primary output's kind is auto or top1); ``hook``, a
    user's metric over all outputs, judges too. No choice and no hook: auto on the primary."""
    validate(model, eval_set.batches, what="eval")
    sess = graphs.session(model)
    names = tuple(o.name for o in sess.get_outputs())
    outputs = eval_set.run(sess, names)
    proto = graphs.load(model)
    choices = (metric,) if isinstance(metric, MetricChoice) else tuple(metric)
    if not choices and hook is None:
        choices = (MetricChoice(),)
    judges: list[Judge] = []
    for choice in choices:
        if choice.output and choice.output not in names:
            raise InvalidInputError(
                f"--metric names output {choice.output!r}; the model's outputs are {list(names)}"
            )
        index = names.index(choice.output) if choice.output else _primary(outputs[0], names, proto)
        kind, arg = choice.kind, choice.arg
        if (
            eval_set.labels is not None
            and kind in (None, Metric.TOP1_AGREEMENT)
            and not choice.output
        ):
            predictions = _predictions(outputs, index)
            if len(predictions) != len(eval_set.labels):
                raise InvalidInputError(
                    f"{len(eval_set.labels)} labels for {len(predictions)} predictions of "
                    f"output {names[index]!r}"
                )
            baseline = _accuracy(predictions, eval_set.labels)
            judges.append(Judge(index, names[index], Metric.ACCURACY, "", baseline))
            continue
        if kind is None:
            kind, arg = _fidelity_metric(outputs[0][index], names[index], proto)
        baseline = 0.0 if kind in (Metric.MAX_ABS_ERROR, Metric.MSE) else 1.0
        judges.append(Judge(index, names[index], kind, arg, baseline))
    if hook is not None:
        joined = _joined(outputs, names)
        own = hook(joined, joined)
        judges.append(Judge(-1, "*", Metric.MODULE, str(getattr(hook, "module", "")), own))
    first = judges[0]
    own_scores = tuple(OutputScore(j.name, j.label, j.baseline, 0.0) for j in judges)
    return Reference(
        outputs,
        names,
        Score(first.kind, first.baseline, 0.0, own_scores),
        first.output,
        tuple(judges),
        hook,
    )


def head(eval_set: EvalSet, ref: Reference, count: int) -> tuple[EvalSet, Reference]:
    """The first ``count`` samples and the original's outputs on them (for a quick screen)."""
    part = eval_set.head(count)
    outputs = []
    for batch, full, outs in zip(part.batches, eval_set.batches, ref.outputs, strict=False):
        rows, whole = part.rows(batch), eval_set.rows(full)
        outputs.append(outs if rows == whole else [o[:rows] for o in outs])
    judges = list(ref.judges)
    for i, j in enumerate(judges):  # the original's own score, on these samples
        if j.kind is Metric.ACCURACY and part.labels is not None:
            own = _accuracy(_predictions(outputs, j.output), part.labels)
            judges[i] = replace(j, baseline=own)
        elif j.kind is Metric.MODULE and ref.hook is not None:
            joined = _joined(outputs, ref.output_names)
            judges[i] = replace(j, baseline=ref.hook(joined, joined))
    own_scores = tuple(OutputScore(j.name, j.label, j.baseline, 0.0) for j in judges)
    score = Score(judges[0].kind, judges[0].baseline, 0.0, own_scores)
    return part, replace(ref, outputs=tuple(outputs), score=score, judges=tuple(judges))


def score(model: bytes, eval_set: EvalSet, ref: Reference) -> Score:
    """The candidate's score: each judge's, and the worst (highest drop) as the whole."""
    sess = graphs.session(model)
    outputs = eval_set.run(sess, ref.output_names)
    rows = [eval_set.rows(b) for b in eval_set.batches]
    parts = [_judge(j, outputs, ref, eval_set.labels, rows) for j in ref.judges]
    worst = max(range(len(parts)), key=lambda i: parts[i].drop)
    value, drop = parts[worst].value, parts[worst].drop
    return Score(ref.judges[worst].kind, value, drop, tuple(parts))


def _judge(
    j: Judge,
    outputs: Sequence[list[npt.NDArray[Any]]],
    ref: Reference,
    labels: npt.NDArray[np.int64] | None,
    rows: Sequence[int],
) -> OutputScore:
    if j.kind is Metric.MODULE:
        assert ref.hook is not None
        value = ref.hook(_joined(ref.outputs, ref.output_names), _joined(outputs, ref.output_names))
        return OutputScore(j.name, j.label, value, max(0.0, (j.baseline - value) * 100))
    if j.kind is Metric.ACCURACY:
        assert labels is not None
        acc = _accuracy(_predictions(outputs, j.output), labels)
        return OutputScore(j.name, j.label, acc, max(0.0, (j.baseline - acc) * 100))
    # Batches may differ in shape (sequences of varying length): compare batch by batch.
    pairs = [(w[j.output], g[j.output]) for g, w in zip(outputs, ref.outputs, strict=True)]
    value, drop = metric_value(j.kind, pairs, arg=j.arg, rows=rows)
    return OutputScore(j.name, j.label, value, drop)


def metric_value(
    kind: Metric,
    pairs: Sequence[tuple[npt.NDArray[Any], npt.NDArray[Any]]],
    *,
    arg: str = "",
    rows: Sequence[int] | None = None,
) -> tuple[float, float]:
    """(value, drop in points) of one fidelity metric over (reference, candidate) output pairs,
    one pair per batch; ``rows`` are the batches' sample counts (to tell [N, T, C] from
    [T, N, C]; default: the first axis is the sample axis)."""
    if kind is Metric.IOU:
        value = iou(pairs, _threshold(arg))
        return value, (1 - value) * 100
    if kind is Metric.SEQUENCE:
        counts = rows if rows is not None else [len(w) for w, _ in pairs]
        value = sequence_agreement(pairs, counts, ctc=arg == "ctc")
        return value, (1 - value) * 100
    fpairs = [(w.astype(np.float64), g.astype(np.float64)) for w, g in pairs]
    if kind is Metric.TOP1_AGREEMENT:
        agree = float(np.concatenate([_top1(g) == _top1(w) for w, g in fpairs]).mean())
        return agree, (1 - agree) * 100
    if kind is Metric.MSE:
        err2 = sum(float(np.square(g - w).sum()) for w, g in fpairs)
        power = sum(float(np.square(w).sum()) for w, _ in fpairs)
        count = sum(w.size for w, _ in fpairs)
        return err2 / max(count, 1), 100 * err2 / max(power, 1e-24)
    if kind is Metric.MAX_ABS_ERROR:
        err = max(float(np.abs(g - w).max()) for w, g in fpairs)
        peak = max(float(np.abs(w).max()) for w, _ in fpairs)
        return err, 100 * err / max(peak, 1e-12)
    cos = cosine(fpairs)
    return cos, max(0.0, (1 - cos) * 100)


def cosine(pairs: Sequence[tuple[npt.NDArray[Any], npt.NDArray[Any]]]) -> float:
    """Mean cosine similarity per sample (each sample's values flattened)."""
    cosines = []
    for w, g in pairs:
        g2 = np.asarray(g, np.float64).reshape(len(g), -1)
        w2 = np.asarray(w, np.float64).reshape(len(w), -1)
        norms = np.linalg.norm(g2, axis=1) * np.linalg.norm(w2, axis=1)
        cosines.append((g2 * w2).sum(axis=1) / np.maximum(norms, 1e-12))
    return float(np.concatenate(cosines).mean())


def iou(
    pairs: Sequence[tuple[npt.NDArray[Any], npt.NDArray[Any]]],
    threshold: float = DEFAULT_IOU_THRESHOLD,
) -> float:
    """Intersection over union of ``value > threshold`` in reference and candidate, summed
    over every element of every pair; 1.0 when neither has any element above it."""
    inter = union = 0
    for w, g in pairs:
        a, b = np.asarray(w) > threshold, np.asarray(g) > threshold
        inter += int(np.logical_and(a, b).sum())
        union += int(np.logical_or(a, b).sum())
    return 1.0 if union == 0 else inter / union


def sequence_agreement(
    pairs: Sequence[tuple[npt.NDArray[Any], npt.NDArray[Any]]],
    rows: Sequence[int],
    *,
    ctc: bool = False,
) -> float:
    """The share of sequences whose decoded sequences are equal: argmax over the last axis of
    float [N, T, C] (or [T, N, C] when the second axis is the batch's ``rows``), or integer ids
    [N, T] as they are; ``ctc``: repeats collapsed, blanks (class 0) dropped."""
    same = total = 0
    for (w, g), n in zip(pairs, rows, strict=True):
        a, b = decode(w, n, ctc=ctc), decode(g, n, ctc=ctc)
        same += sum(x == y for x, y in zip(a, b, strict=True))
        total += len(a)
    return 1.0 if total == 0 else same / total


def decode(values: npt.NDArray[Any], rows: int, *, ctc: bool = False) -> list[tuple[int, ...]]:
    """One batch's sequences of class ids (see ``sequence_agreement``)."""
    arr = np.asarray(values)
    ids = arr.argmax(axis=-1) if np.issubdtype(arr.dtype, np.floating) else arr
    if ids.ndim != 2:
        raise InvalidInputError(
            f"seq needs [N, T, C] class scores or [N, T] ids, got {list(arr.shape)}"
        )
    if ids.shape[0] != rows and ids.shape[1] == rows:
        ids = ids.T  # [T, N]: time first
    out = []
    for row in ids.tolist():
        kept = [
            c
            for i, c in enumerate(row)
            if not ctc or (c != CTC_BLANK and (i == 0 or row[i - 1] != c))
        ]
        out.append(tuple(int(c) for c in kept))
    return out


def _joined(
    outputs: Sequence[list[npt.NDArray[Any]]], names: Sequence[str]
) -> dict[str, npt.NDArray[Any]]:
    """Every output's batches joined on the first axis, for a metric module; outputs whose
    batches differ past the first axis (sequences of varying length) are refused."""
    joined: dict[str, npt.NDArray[Any]] = {}
    for i, name in enumerate(names):
        parts = [o[i] for o in outputs]
        if len(parts) == 1:
            joined[name] = parts[0]
            continue
        if any(p.ndim == 0 for p in parts) or len({p.shape[1:] for p in parts}) > 1:
            raise InvalidInputError(
                f"--metric-module: output {name!r} does not join across batches "
                f"({sorted({p.shape for p in parts})}); its batches must share all but the "
                "first dimension"
            )
        joined[name] = np.concatenate(parts)
    return joined


def _threshold(arg: str) -> float:
    return float(arg) if arg else DEFAULT_IOU_THRESHOLD


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


def _class_scores(out: npt.NDArray[Any], name: str, proto: Any, *, ndim: int = 2) -> bool:
    """A float output of ``ndim`` dimensions, K>1 on the last, with class-score semantics: made
    by Softmax/LogSoftmax, read by an ArgMax (itself or the tensor it was computed from), or
    rows on the last axis that are probabilities (3-D: or log-probabilities)."""
    if not (out.ndim == ndim and out.shape[-1] > 1 and np.issubdtype(out.dtype, np.floating)):
        return False
    producer = next((n for n in proto.graph.node if name in n.output), None)
    if producer is not None and producer.op_type in ("Softmax", "LogSoftmax"):
        return True
    sources = {name, *(producer.input if producer is not None else ())}
    if any(n.op_type == "ArgMax" and set(n.input) & sources for n in proto.graph.node):
        return True
    rows = out.astype(np.float64)
    if np.all(rows >= 0) and np.allclose(rows.sum(axis=-1), 1.0, atol=1e-3):
        return True
    if ndim == 3 and np.all(rows <= 0):  # log-probabilities (a CTC head's LogSoftmax)
        return bool(np.allclose(np.exp(rows).sum(axis=-1), 1.0, atol=1e-3))
    return False


def _fidelity_metric(out: npt.NDArray[Any], name: str, proto: Any) -> tuple[Metric, str]:
    """The auto metric for an output (and its argument), from its first batch."""
    if np.issubdtype(out.dtype, np.integer) or _class_scores(out, name, proto):
        return Metric.TOP1_AGREEMENT, ""
    floating = np.issubdtype(out.dtype, np.floating)
    if (
        floating
        and out.ndim == 4
        and out.shape[1] == 1
        and out.size
        and float(out.min()) >= 0
        and float(out.max()) <= 1
    ):
        return Metric.IOU, ""
    if _class_scores(out, name, proto, ndim=3):
        return Metric.SEQUENCE, ""
    per_sample = int(np.prod(out.shape[1:])) if out.ndim > 1 else 1
    return (Metric.MAX_ABS_ERROR if per_sample == 1 else Metric.COSINE), ""


def _top1(values: npt.NDArray[Any]) -> npt.NDArray[Any]:
    return values.argmax(axis=1) if values.ndim == 2 else values


def _predictions(outputs: Sequence[list[npt.NDArray[Any]]], primary: int) -> npt.NDArray[Any]:
    return np.concatenate([_top1(o[primary]) for o in outputs])


def _accuracy(pred: npt.NDArray[Any], labels: npt.NDArray[np.int64]) -> float:
    return float((pred.astype(np.int64) == labels).mean())


def _shapes(inputs: Mapping[str, npt.NDArray[Any]]) -> str:
    return ", ".join(f"{k}{list(np.shape(v))}" for k, v in inputs.items())
