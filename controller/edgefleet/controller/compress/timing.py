"""Latency, measured and never assumed: the median of repeated ONNX Runtime runs after warm-up.

``Timer`` is the seam: ``LocalTimer`` times on this machine; a remote timer (timing on a device
through its agent, ``--profile-on DEVICE``) implements the same one-method Protocol.

``compare`` is the speed gate's measurement: the original and a candidate timed in interleaved
rounds (``speedstats``) at one thread count. On a ``LocalTimer`` both sessions stay open and
each turn is a few runs (at least ``turn_s``); on any other Timer each turn is one ``measure``
(on a device: one Benchmark call).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from . import graphs, speedstats
from .graphs import Feed
from .speedstats import Plan, SpeedRatio


@dataclass(frozen=True)
class Latency:
    p50_ms: float
    p90_ms: float
    threads: int
    runs: int
    cores: int = 0  # CPUs of the machine that timed it (0: not reported)


def host_cores() -> int:
    """CPUs this process may run on (a container's or a cpuset's limit, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class Timer(Protocol):
    """Times one model on one feed with a given number of intra-op threads."""

    @property
    def where(self) -> str:
        """Where the timing ran, for the report (``local:AMD EPYC``, ``device:jetson-7``)."""
        ...

    def measure(self, model: bytes, feed: Feed, *, threads: int) -> Latency: ...


@dataclass(frozen=True)
class LocalTimer:
    warmup: int = 5
    repeats: int = 30
    min_seconds: float = 0.05  # keep repeating until this much time is spent, for tiny models
    turn_s: float = 0.01  # a ``compare`` turn runs a model at least this long

    @property
    def where(self) -> str:
        import platform

        return f"local:{platform.machine()}"

    def measure(self, model: bytes, feed: Feed, *, threads: int) -> Latency:
        sess = graphs.session(model, threads=threads)
        feed_dict = dict(feed)
        for _ in range(self.warmup):
            sess.run(None, feed_dict)
        times: list[float] = []
        started = time.perf_counter()
        while len(times) < self.repeats or (
            time.perf_counter() - started < self.min_seconds and len(times) < 50 * self.repeats
        ):
            t0 = time.perf_counter()
            sess.run(None, feed_dict)
            times.append(time.perf_counter() - t0)
        ms = np.asarray(times) * 1e3
        return Latency(
            float(np.percentile(ms, 50)),
            float(np.percentile(ms, 90)),
            threads,
            len(times),
            host_cores(),
        )

    def turns(
        self, original: bytes, candidate: bytes, feed: Feed, *, threads: int
    ) -> Callable[[int], Latency]:
        """One turn of ``original`` (0) or ``candidate`` (1): runs for at least ``turn_s`` on
        sessions kept open for the whole comparison, both warmed up first."""
        sessions = [graphs.session(m, threads=threads) for m in (original, candidate)]
        feed_dict = dict(feed)
        slowest = 0.0
        for sess in sessions:
            for _ in range(self.warmup):
                sess.run(None, feed_dict)
            t0 = time.perf_counter()
            sess.run(None, feed_dict)
            slowest = max(slowest, time.perf_counter() - t0)
        runs = max(1, min(1000, math.ceil(self.turn_s / max(slowest, 1e-7))))

        def turn(which: int) -> Latency:
            return _runs(sessions[which], feed_dict, runs, threads)

        return turn


def _runs(sess: Any, feed: dict[str, Any], runs: int, threads: int) -> Latency:
    took = np.empty(runs)
    for i in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feed)
        took[i] = time.perf_counter() - t0
    ms = took * 1e3
    return Latency(
        float(np.percentile(ms, 50)), float(np.percentile(ms, 90)), threads, runs, host_cores()
    )


def compare(
    timer: Timer,
    original: bytes,
    candidate: bytes,
    feed: Feed,
    *,
    threads: int,
    plan: Plan | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[SpeedRatio, Latency]:
    """The candidate's speed ratio to the original at ``threads`` (interleaved rounds, per
    ``plan``) and the candidate's latency over its turns (median p50 and p90, all runs)."""
    if isinstance(timer, LocalTimer):
        raw = timer.turns(original, candidate, feed, threads=threads)
    else:
        models = (original, candidate)

        def raw(which: int) -> Latency:
            return timer.measure(models[which], feed, threads=threads)

    seen: list[Latency] = []

    def turn(which: int) -> float:
        lat = raw(which)
        if which == speedstats.CANDIDATE:
            seen.append(lat)
        return lat.p50_ms

    ratio = speedstats.interleaved(turn, threads=threads, plan=plan or Plan(), clock=clock)
    latency = Latency(
        float(np.median([lat.p50_ms for lat in seen])),
        float(np.median([lat.p90_ms for lat in seen])),
        threads,
        sum(lat.runs for lat in seen),
        seen[0].cores,
    )
    return ratio, latency
