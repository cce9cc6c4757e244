"""Golden inputs and outputs for a compressed release's device health check, from the winner.

A handful of eval samples on which the original and the compressed model agree (with a clear
margin for class scores, so a correct install cannot flip them), spread over the predicted
classes. The expected outputs are the compressed model's own, computed the way an agent checks
them (``edgefleet.agent.checking.run_golden``: all rows in one run, or one row per run where
the model is fixed at batch 1 or has broadcast inputs, on the CPU provider), never another
model's: dynamic quantization's activation scales depend on the batch, so expectations made
one way and checked another would differ by far more than any device does. Each float output
gets its own tolerance, derived from the spread measured by running the winner again as a
device may (1, 2 and 4 intra-op threads), times ``SPREAD_FACTOR``, with a floor (1e-4, and
0.1% of the output's largest value, 1% for quantized graphs, whose integer kernels differ
between CPUs).

The tolerances *hold* when every integer output is the same in every run and each float
tolerance is at most ``MAX_RELATIVE_TOLERANCE`` of the output's largest value (beyond that the
check would tell little); the search attaches golden data automatically only then.

The ``.npz`` (``to_npz``): ``input/<name>`` (rows first), ``broadcast/<name>`` (inputs fed
unchanged with every row), ``output/<name>``, ``tolerance/<output>`` (max abs error that output
may show on a device) and ``tolerance`` (the largest of them). An eval set in the feeds layout
(``edgefleet.common.feeds``) gives golden data in that layout: its first feeds as they are,
``feedK/input/<name>`` and ``feedK/expected/<output>``, each feed run alone on a device. With
``--carry IN=OUT`` (eval feeds or rows run as one stream) the golden feeds are one stream too:
``carry/<IN>`` names ``OUT``, the feeds after the first (but those that start a new stream)
leave ``IN`` out, and the expectations are the compressed model's own outputs with its own
state carried from feed to feed, as a device runs them, so the check covers the whole stream.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet.common import feeds

from . import graphs
from .evaluating import EvalSet

Array = npt.NDArray[Any]
SPREAD_FACTOR = 4.0
MAX_RELATIVE_TOLERANCE = 0.1
_THREADS = (1, 2, 4)
_POOL = 64  # eval samples looked at to pick the golden rows from
_QUANTIZED_OPS = {
    "DynamicQuantizeLinear",
    "MatMulInteger",
    "ConvInteger",
    "QLinearConv",
    "QLinearMatMul",
    "DequantizeLinear",
    "MatMulNBits",
}


class GoldenMode(StrEnum):
    AUTO = "auto"  # attach when the tolerances hold
    ALWAYS = "always"
    NEVER = "never"


@dataclass(frozen=True)
class Golden:
    inputs: dict[str, Array]
    outputs: dict[str, Array]
    tolerance: float  # the largest of ``tolerances``
    tolerances: dict[str, float] = field(default_factory=dict)  # per float output
    broadcast: dict[str, Array] = field(default_factory=dict)
    holds: bool = True
    note: str = ""
    steps: tuple[tuple[dict[str, Array], dict[str, Array]], ...] = ()  # feeds: (inputs, outputs)
    carry: tuple[tuple[str, str], ...] = ()  # feeds as one stream: (IN, OUT), ``carry/<IN>``

    @property
    def rows(self) -> int:
        if self.steps:
            return len(self.steps)
        return len(next(iter(self.inputs.values())))

    def to_npz(self) -> bytes:
        """``input/``, ``broadcast/``, ``output/``, ``tolerance/`` arrays and ``tolerance``;
        feeds: ``feedK/input/``, ``feedK/expected/`` instead of the first three."""
        buf = io.BytesIO()
        arrays = {f"{feeds.INPUT}{k}": v for k, v in self.inputs.items()}
        for i, (ins, outs) in enumerate(self.steps):
            arrays |= {feeds.key(i, f"{feeds.INPUT}{k}"): v for k, v in ins.items()}
            arrays |= {feeds.key(i, f"{feeds.EXPECTED}{k}"): v for k, v in outs.items()}
        arrays |= feeds.carry_arrays(self.carry)
        arrays |= {f"{feeds.BROADCAST}{k}": v for k, v in self.broadcast.items()}
        arrays |= {f"output/{k}": v for k, v in self.outputs.items()}
        arrays |= {
            f"{feeds.TOLERANCE}{k}": np.asarray(v, np.float64) for k, v in self.tolerances.items()
        }
        np.savez_compressed(buf, tolerance=np.float64(self.tolerance), **arrays)  # type: ignore[arg-type]
        return buf.getvalue()


def golden_for(original: bytes, compressed: bytes, eval_set: EvalSet, *, count: int = 8) -> Golden:
    """Golden rows for ``compressed``, its own outputs, and tolerances that hold on devices."""
    if eval_set.per_feed or eval_set.carry:
        return _golden_feeds(compressed, eval_set, count=count)
    pool, shared = _pool(eval_set)
    feed = pool | shared
    names = [o.name for o in graphs.session(compressed).get_outputs()]
    ref = _run(original, feed, names, shared=shared)
    new = _run(compressed, feed, names, shared=shared)
    idx = _pick(ref, new, count)
    rows = {k: v[idx] for k, v in pool.items()}
    batch_one = bool(shared) or _fixed_at_one(compressed)
    expected = _run(compressed, rows | shared, names, shared=shared, one_by_one=batch_one)
    runs = [
        _run(compressed, rows | shared, names, shared=shared, one_by_one=batch_one, threads=t)
        for t in _THREADS
    ]
    floor_share = _floor_share(compressed)
    tolerances: dict[str, float] = {}
    problems: list[str] = []
    for i, name in enumerate(names):
        tolerance = _tolerance(
            name, [expected[i]], [(r[i], expected[i]) for r in runs], floor_share, problems
        )
        if tolerance is not None:
            tolerances[name] = tolerance
    note = _note(problems, tolerances, f"{len(idx)} rows")
    return Golden(
        rows,
        {k: v for k, v in zip(names, expected, strict=True)},
        max(tolerances.values(), default=0.0),
        tolerances,
        dict(shared),
        not problems,
        note,
    )


def _golden_feeds(compressed: bytes, eval_set: EvalSet, *, count: int) -> Golden:
    """The first ``count`` feeds, each run alone (as a device runs them; with ``carry`` as one
    stream), the compressed model's outputs as expectations and tolerances from the spread
    across thread counts."""
    carried = {inp for inp, _ in eval_set.carry}
    steps = [
        dict(b)
        if i == 0 or i in eval_set.fresh
        else {k: v for k, v in b.items() if k not in carried}
        for i, b in enumerate(eval_set.batches[:count])
    ]  # a carried input of a later feed is the model's own output (the eval set's: the original's)
    names = [o.name for o in graphs.session(compressed).get_outputs()]
    expected = _run_stream(compressed, steps, names, eval_set.carry)
    runs = [_run_stream(compressed, steps, names, eval_set.carry, threads=t) for t in _THREADS]
    floor_share = _floor_share(compressed)
    tolerances: dict[str, float] = {}
    problems: list[str] = []
    for i, name in enumerate(names):
        wants = [e[i] for e in expected]
        observed = [(r[k][i], w) for r in runs for k, w in enumerate(wants)]
        tolerance = _tolerance(name, wants, observed, floor_share, problems)
        if tolerance is not None:
            tolerances[name] = tolerance
    note = _note(problems, tolerances, f"{len(steps)} feeds")
    return Golden(
        {},
        {},
        max(tolerances.values(), default=0.0),
        tolerances,
        holds=not problems,
        note=note,
        steps=tuple(
            (step, dict(zip(names, outs, strict=True)))
            for step, outs in zip(steps, expected, strict=True)
        ),
        carry=eval_set.carry,
    )


def _run_stream(
    model: bytes,
    steps: Sequence[Mapping[str, Array]],
    names: Sequence[str],
    carry: Sequence[tuple[str, str]],
    *,
    threads: int = 1,
) -> list[list[Array]]:
    """Outputs ``names`` of every feed, run alone; a carried input a feed leaves out is the
    previous feed's output (as ``edgefleet.agent.checking`` runs golden feeds)."""
    out: list[list[Array]] = []
    for step in steps:
        feed = dict(step)
        if out:
            last = dict(zip(names, out[-1], strict=True))
            feed |= {inp: last[o] for inp, o in carry if inp not in feed}
        out.append(_run_alone(model, feed, names, threads=threads))
    return out


def _floor_share(model: bytes) -> float:
    """The smallest tolerance, as a share of an output's largest value: quantized graphs are
    coarser than float ones."""
    return 1e-2 if graphs.ops(graphs.load(model)) & _QUANTIZED_OPS else 1e-3


def _tolerance(
    name: str,
    wants: Sequence[Array],
    observed: Sequence[tuple[Array, Array]],
    floor_share: float,
    problems: list[str],
) -> float | None:
    """The tolerance of output ``name`` from the spread of ``observed`` (got, want) pairs
    around the expectations ``wants``; None for an integer output, which must repeat exactly.
    What cannot hold on a device is added to ``problems``."""
    if wants[0].dtype.kind not in "fc":
        if any(not np.array_equal(got, want) for got, want in observed):
            problems.append(f"integer output {name!r} differs between runs")
        return None
    peak = max((float(np.abs(w).max()) for w in wants if w.size), default=0.0)
    spread = max(
        (float(np.abs(got.astype(np.float64) - want).max()) for got, want in observed if got.size),
        default=0.0,
    )
    tolerance = max(1e-4, floor_share * peak, SPREAD_FACTOR * spread)
    if peak > 0 and tolerance > MAX_RELATIVE_TOLERANCE * peak:
        problems.append(
            f"{name!r} needs a tolerance of {tolerance:.3g}, over "
            f"{MAX_RELATIVE_TOLERANCE:.0%} of its largest value {peak:.3g}"
        )
    return tolerance


def _note(problems: list[str], tolerances: Mapping[str, float], what: str) -> str:
    if problems:
        return "; ".join(problems)
    spread_text = ", ".join(f"{k} {v:.3g}" for k, v in tolerances.items()) or "none"
    return f"{what} from the winner itself; tolerances {spread_text}"


def _run_alone(
    model: bytes, feed: Mapping[str, Array], names: Sequence[str], *, threads: int = 1
) -> list[Array]:
    sess = graphs.session(model, threads=threads)
    return [np.asarray(a) for a in sess.run(list(names), dict(feed))]


def _pool(eval_set: EvalSet) -> tuple[dict[str, Array], dict[str, Array]]:
    """Per-sample inputs of the first eval samples (joined across batches where they fit),
    and the broadcast inputs."""
    first = eval_set.batches[0]
    shared = {k: v for k, v in first.items() if k in eval_set.broadcast}
    per_sample = [k for k in first if k not in eval_set.broadcast]
    taken: list[Mapping[str, Array]] = []
    total = 0
    for batch in eval_set.batches:
        if total >= _POOL:
            break
        if any(batch[k].shape[1:] != first[k].shape[1:] for k in per_sample):
            break  # ragged (sequence lengths differ between batches): keep what fits
        taken.append(batch)
        total += eval_set.rows(batch)
    pool = {k: np.concatenate([b[k] for b in taken])[:_POOL] for k in per_sample}
    return pool, shared


def _fixed_at_one(model: bytes) -> bool:
    firsts = [i.shape[0] for i in graphs.session(model).get_inputs() if i.shape]
    return bool(firsts) and all(d == 1 for d in firsts)


def _run(
    model: bytes,
    feed: Mapping[str, Array],
    names: Sequence[str],
    *,
    shared: Mapping[str, Array],
    one_by_one: bool | None = None,
    threads: int = 1,
) -> list[Array]:
    """Outputs for every row: in one run, or one row per run (joined on the first axis)."""
    sess = graphs.session(model, threads=threads)
    per_sample = {k: v for k, v in feed.items() if k not in shared}
    if one_by_one is None:
        one_by_one = bool(shared) or _fixed_at_one(model)
    if not one_by_one:
        return [np.asarray(a) for a in sess.run(list(names), dict(feed))]
    n = len(next(iter(per_sample.values())))
    parts = [
        sess.run(list(names), {k: v[i : i + 1] for k, v in per_sample.items()} | dict(shared))
        for i in range(n)
    ]
    return [np.concatenate([np.asarray(p[j]) for p in parts]) for j in range(len(names))]


def _pick(ref: Sequence[Array], new: Sequence[Array], count: int) -> npt.NDArray[np.int64]:
    """Rows where the two models agree: class scores with the clearest margin, spread over the
    classes; else the rows closest to the original."""
    n = len(new[0]) if new and new[0].ndim else 1
    scores_at = next(
        (i for i, o in enumerate(new) if o.ndim == 2 and o.shape[1] > 1 and o.dtype.kind == "f"),
        None,
    )
    if scores_at is not None and len(new[scores_at]) == n:
        top = np.sort(new[scores_at], axis=1)
        margin = top[:, -1] - top[:, -2]
        pred = new[scores_at].argmax(axis=1)
        ok = pred == ref[scores_at].argmax(axis=1)
        order = _spread(pred, np.where(ok, margin, -np.inf), count)
        if len(order):
            return np.sort(order)
    first = next((i for i, o in enumerate(new) if o.dtype.kind == "f" and len(o) == n), 0)
    diff = np.abs(new[first].reshape(n, -1).astype(np.float64) - ref[first].reshape(n, -1)).max(
        axis=1
    )
    return np.sort(np.argsort(diff, kind="stable")[:count])


def _spread(pred: npt.NDArray[Any], margin: npt.NDArray[Any], count: int) -> npt.NDArray[np.int64]:
    """Round-robin over predicted classes, most confident first within each class."""
    by_class = {
        c: list(np.flatnonzero(pred == c)[np.argsort(-margin[pred == c], kind="stable")])
        for c in np.unique(pred)
    }
    picked: list[int] = []
    while len(picked) < count and any(by_class.values()):
        for c in sorted(by_class):
            if by_class[c] and len(picked) < count:
                i = by_class[c].pop(0)
                if np.isfinite(margin[i]):
                    picked.append(int(i))
    return np.asarray(picked, dtype=np.int64)
