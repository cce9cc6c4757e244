"""Latency, measured and never assumed: the median of repeated ONNX Runtime runs after warm-up.

``Timer`` is the seam: ``LocalTimer`` times on this machine; a remote timer (timing on a device
through its agent, ``--profile-on DEVICE``) implements the same one-method Protocol.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from . import graphs
from .graphs import Feed


@dataclass(frozen=True)
class Latency:
    p50_ms: float
    p90_ms: float
    threads: int
    runs: int


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
            float(np.percentile(ms, 50)), float(np.percentile(ms, 90)), threads, len(times)
        )
