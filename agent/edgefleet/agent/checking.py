"""Measuring a loaded release: golden (or smoke) outputs and timed single-request runs.

The measuring half of the health checks; ``health`` judges what this returns. Used before
activation (``installing``) and at each checkup of a health window (``watching``).

Golden inputs go through the model in one batch when its first dimension allows that, else row
by row (a model fixed at batch 1), outputs joined back. Latency is timed like a live request:
one golden row at a time (cycling through them), or zeros where there is no golden data, after
one warm-up run, on ``timer`` (``time.perf_counter``; tests inject theirs, so no verdict
depends on the speed of the machine running them).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edgefleet.agent import golden as g
from edgefleet.agent.health import Latency
from edgefleet.agent.runtime import Array, ModelRuntime
from edgefleet.common.errors import EdgeFleetError
from edgefleet.common.types import HealthPolicy

TIMED_RUNS = 20


@dataclass(frozen=True)
class Examination:
    output_problems: tuple[str, ...]
    latency: Latency


def zeros_feed(runtime: ModelRuntime) -> dict[str, Array]:
    """One request of zeros (dynamic dimensions = 1): the smoke test without golden data."""
    return {
        s.name: np.zeros(tuple(d if d >= 0 else 1 for d in s.shape), dtype=s.dtype)
        for s in runtime.inputs
    }


def _row_at_a_time(runtime: ModelRuntime, rows: int) -> bool:
    """True when the model takes one row per run but the golden data has more."""
    firsts = [s.shape[0] for s in runtime.inputs if s.shape]
    return rows > 1 and bool(firsts) and all(d == 1 for d in firsts)


def run_golden(runtime: ModelRuntime, golden: g.GoldenSet) -> dict[str, Array]:
    """The model's outputs for every golden row (raises what ``predict`` raises)."""
    rows = golden.rows
    if not _row_at_a_time(runtime, rows):
        return runtime.predict(golden.feed(0, rows))
    parts = [runtime.predict(golden.feed(i, i + 1)) for i in range(rows)]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def output_problems(
    runtime: ModelRuntime, golden: g.GoldenSet | None, policy: HealthPolicy
) -> list[str]:
    """What is wrong with the golden (or smoke) outputs; empty when they pass."""
    try:
        if golden is None:
            return list(g.nonfinite(runtime.predict(zeros_feed(runtime))).values())
        outputs = run_golden(runtime, golden)
    except EdgeFleetError as exc:
        what = "golden" if golden is not None else "smoke"
        return [f"{what} inference failed: {exc}"]
    return g.compare(
        golden.expected,
        outputs,
        max_abs_error=policy.golden_max_abs_error,
        min_agreement=policy.golden_min_agreement,
    )


def single_feeds(runtime: ModelRuntime, golden: g.GoldenSet | None) -> list[dict[str, Array]]:
    if golden is None:
        return [zeros_feed(runtime)]
    firsts = [s.shape[0] for s in runtime.inputs if s.shape]
    if all(d in (-1, 1) for d in firsts):
        return [golden.feed(i, i + 1) for i in range(min(golden.rows, TIMED_RUNS))]
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
    median, p95 = np.percentile(np.asarray(timings), [50, 95])
    return Latency(samples=len(timings), median_ms=float(median), p95_ms=float(p95))


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
    try:
        latency = time_runs(runtime, single_feeds(runtime, golden), timer=timer)
    except EdgeFleetError as exc:
        return Examination((f"timed inference failed: {exc}",), Latency(0, 0.0, 0.0))
    return Examination((), latency)
