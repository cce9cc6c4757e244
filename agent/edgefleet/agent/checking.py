"""Measuring a loaded release: golden (or smoke) outputs and timed single-request runs.

The measuring half of the health checks; ``health`` judges what this returns. Used before
activation (``preparing``) and at each checkup of a health window (``watching``).

Golden inputs go through the model in one batch when its first dimension allows that, else row
by row (a model fixed at batch 1, or golden data with broadcast inputs), outputs joined back.
Golden feeds run one at a time; with ``carry`` (a recurrent model) as one stream, each feed
that leaves out a carried input taking the model's own output of the previous feed.
Without golden data the smoke input is zeros with every dynamic dimension set to 1, then (when
the model refuses that: a reflect pad, a window) to 2, then 16; a model that refuses all of
them is not judged on outputs (``Examination.note`` says so, and the install event carries it):
only golden data can check such a model. Latency is timed like a live request: one golden row at
a time (cycling through them), or the smoke input, after one warm-up run, on ``timer``
(``time.perf_counter``; tests inject theirs, so no verdict depends on the speed of the machine
running them).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edgefleet.agent import goldenset as g
from edgefleet.agent.health import Latency
from edgefleet.agent.percentiles import percentiles
from edgefleet.agent.runtime import Array, ModelRuntime
from edgefleet.common.errors import EdgeFleetError
from edgefleet.common.types import HealthPolicy

TIMED_RUNS = 20
SMOKE_SIZES = (1, 2, 16)  # tried in turn for every dynamic dimension of the smoke input


@dataclass(frozen=True)
class Examination:
    output_problems: tuple[str, ...]
    latency: Latency
    note: str = ""  # a check that could not be made (no smoke input the model accepts)


def zeros_feed(runtime: ModelRuntime, size: int = 1) -> dict[str, Array]:
    """One request of zeros (dynamic dimensions = ``size``): the smoke input without golden
    data."""
    return {
        s.name: np.zeros(tuple(d if d >= 0 else size for d in s.shape), dtype=s.dtype)
        for s in runtime.inputs
    }


def smoke_feed(runtime: ModelRuntime) -> tuple[dict[str, Array] | None, dict[str, Array], str]:
    """(the first zeros feed the model runs, its outputs, "") or (None, {}, why none ran)."""
    errors: list[str] = []
    for size in SMOKE_SIZES:
        feed = zeros_feed(runtime, size)
        try:
            return feed, runtime.predict(feed), ""
        except EdgeFleetError as exc:
            errors.append(f"{size}: {exc}")
            if not any(d < 0 for s in runtime.inputs for d in s.shape):
                break  # nothing to vary
    sizes = "/".join(str(s) for s in SMOKE_SIZES)
    return (
        None,
        {},
        f"smoke inference skipped: the model runs on no zeros input with dynamic dimensions "
        f"{sizes} ({errors[-1][:300]}); give the release golden data to check its outputs",
    )


def _row_at_a_time(runtime: ModelRuntime, rows: int, golden: g.GoldenSet | None = None) -> bool:
    """True when the model takes one row per run but the golden data has more, or the golden
    data has broadcast inputs (fed whole with every row)."""
    if rows > 1 and golden is not None and golden.broadcast:
        return True
    firsts = [s.shape[0] for s in runtime.inputs if s.shape]
    return rows > 1 and bool(firsts) and all(d == 1 for d in firsts)


def run_golden(runtime: ModelRuntime, golden: g.GoldenSet) -> dict[str, Array]:
    """The model's outputs for every golden row (raises what ``predict`` raises)."""
    rows = golden.rows
    if not _row_at_a_time(runtime, rows, golden):
        return runtime.predict(golden.feed(0, rows))
    parts = [runtime.predict(golden.feed(i, i + 1)) for i in range(rows)]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def output_problems(
    runtime: ModelRuntime, golden: g.GoldenSet | None, policy: HealthPolicy
) -> list[str]:
    """What is wrong with the golden (or smoke) outputs; empty when they pass."""
    if golden is None:
        _, smoke_outputs, _ = smoke_feed(runtime)  # none accepted: not judged (see examine)
        return list(g.nonfinite(smoke_outputs).values())
    if golden.steps:  # the feeds layout: each feed judged on its own
        problems: list[str] = []
        outputs: dict[str, Array] = {}
        for i, (inputs, expected) in enumerate(golden.steps):
            feed = dict(inputs)
            for inp, out in golden.carry:  # one stream: the previous feed's own output
                if inp not in feed:
                    if out not in outputs:
                        return [f"golden feed {i} takes {inp!r} from missing output {out!r}"]
                    feed[inp] = outputs[out]
            try:
                outputs = runtime.predict(feed)
            except EdgeFleetError as exc:
                return [f"golden inference failed on feed {i}: {exc}"]
            found = g.compare(
                expected,
                outputs,
                max_abs_error=policy.golden_max_abs_error,
                min_agreement=policy.golden_min_agreement,
                tolerances=golden.tolerances,
            )
            problems += [f"feed {i}: {p}" for p in found]
        return problems
    try:
        outputs = run_golden(runtime, golden)
    except EdgeFleetError as exc:
        return [f"golden inference failed: {exc}"]
    return g.compare(
        golden.expected,
        outputs,
        max_abs_error=policy.golden_max_abs_error,
        min_agreement=policy.golden_min_agreement,
        tolerances=golden.tolerances,
    )


def single_feeds(runtime: ModelRuntime, golden: g.GoldenSet | None) -> list[dict[str, Array]]:
    """Feeds to time, one request each; empty when there is no input the model accepts."""
    if golden is None:
        feed, _, _ = smoke_feed(runtime)
        return [feed] if feed is not None else []
    firsts = [s.shape[0] for s in runtime.inputs if s.shape]
    if golden.steps or golden.broadcast or all(d in (-1, 1) for d in firsts):
        feeds = [golden.feed(i, i + 1) for i in range(min(golden.rows, TIMED_RUNS))]
        return [f for f in feeds if all(inp in f for inp, _ in golden.carry)]
    return [golden.feed(0, golden.rows)]


def time_runs(
    runtime: ModelRuntime,
    feeds: list[dict[str, Array]],
    *,
    runs: int = TIMED_RUNS,
    timer: Callable[[], float] = time.perf_counter,
) -> Latency:
    """Median and p95 of ``runs`` timed requests (after one warm-up); raises what predict does."""
    runtime.predict(feeds[0])  # warm-up: first runs allocate
    timings = []
    for i in range(runs):
        feed = feeds[i % len(feeds)]
        started = timer()
        runtime.predict(feed)
        timings.append((timer() - started) * 1000.0)
    median, p95 = percentiles(timings, (50, 95))
    return Latency(samples=len(timings), median_ms=median, p95_ms=p95)


def examine(
    runtime: ModelRuntime,
    golden: g.GoldenSet | None,
    policy: HealthPolicy,
    *,
    timer: Callable[[], float] = time.perf_counter,
) -> Examination:
    """Everything the pre-activation check judges; a run that raises is an output problem."""
    problems = output_problems(runtime, golden, policy)
    if problems:
        return Examination(tuple(problems), Latency(0, 0.0, 0.0))
    feeds = single_feeds(runtime, golden)
    if not feeds:
        return Examination((), Latency(0, 0.0, 0.0), smoke_feed(runtime)[2])
    try:
        latency = time_runs(runtime, feeds, timer=timer)
    except EdgeFleetError as exc:
        return Examination((f"timed inference failed: {exc}",), Latency(0, 0.0, 0.0))
    return Examination((), latency)
