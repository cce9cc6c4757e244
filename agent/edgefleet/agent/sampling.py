"""Predict outcomes, recorded lock-free on the hot path and folded when someone reads them.

The serving threads do O(few hundred ns) per request: add a key to ``in_flight`` and discard it
(``set`` operations), append the latency to ``pending`` (a ``deque``: ``append``/``popleft``
are atomic under the GIL, so no lock). Readers fold ``pending`` under the lock into two views:

* cumulative ``Totals`` (count, sum, bucket counts) for the Prometheus collector in
  ``metrics`` (``edgefleet_inference_latency_seconds``, ``..._requests_total``);
* the telemetry window (``drain``: requests, errors and latencies since the last drain).

A request refused for the caller's inputs at run time (``record(..., refused=True)``: ONNX
Runtime raised and ``blame`` put it on the inputs, ``reason="invalid_input"``) is a failed
request in the totals, but in the telemetry window it counts in ``refused`` only, neither in
``requests`` nor in ``errors``: the window's error rate (``errors / requests``) is what the
rollout's ``--max-error-rate`` gate reads, and a caller's bad tensors are no failure of the
release.

Failed requests take the lock at once (the error path is not the hot path). A writer folds
when ``pending`` passes ``FOLD_AT``, so memory stays bounded when nobody reads (metrics off).
"""

from __future__ import annotations

import bisect
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

MAX_SAMPLES = 65536  # latencies kept per telemetry window; counts stay exact beyond it
FOLD_AT = 4096  # pending samples a writer folds itself
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


@dataclass(frozen=True)
class WindowStats:
    requests: int
    errors: int
    latencies_s: Sequence[float]
    refused: int = 0
    """Refused for the caller's inputs (in neither ``requests`` nor ``errors``)."""


@dataclass(frozen=True)
class Totals:
    """Since start: served requests (``count``, ``sum_s``, per-bucket counts, the last bucket
    being +Inf; not cumulative) and failed ones."""

    count: int
    sum_s: float
    buckets: tuple[int, ...]
    failed: int

    @property
    def requests(self) -> int:
        return self.count + self.failed


class Window:
    def __init__(self, buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        # the hot path: touched without a lock
        self.in_flight: set[int] = set()
        self.pending: deque[float] = deque()
        # folded views, under the lock
        self._lock = threading.Lock()
        self._bounds = tuple(buckets)
        self._counts = [0] * (len(self._bounds) + 1)
        self._count = self._failed = 0
        self._sum = 0.0
        self._requests = self._errors = self._refused = 0
        self._latencies: deque[float] = deque(maxlen=MAX_SAMPLES)

    @property
    def bounds(self) -> tuple[float, ...]:
        return self._bounds

    def record(self, seconds: float, *, ok: bool, refused: bool = False) -> None:
        """One request's outcome (the servicer appends to ``pending`` itself when it can);
        ``refused``: failed for the caller's inputs, not the release (``ok`` is then False)."""
        if ok:
            self.pending.append(seconds)
            if len(self.pending) > FOLD_AT:
                self.fold()
            return
        with self._lock:
            self._failed += 1
            if refused:
                self._refused += 1
                return
            self._requests += 1
            self._errors += 1

    def fold(self) -> None:
        """Move what writers appended into both views."""
        with self._lock:
            self._fold()

    def _fold(self) -> None:
        pending, bounds, counts = self.pending, self._bounds, self._counts
        taken = []
        for _ in range(len(pending)):  # only this reader pops, so len() is a lower bound
            seconds = pending.popleft()
            counts[bisect.bisect_left(bounds, seconds)] += 1
            taken.append(seconds)
        self._count += len(taken)
        self._sum += sum(taken)
        self._requests += len(taken)
        self._latencies.extend(taken)

    def totals(self) -> Totals:
        with self._lock:
            self._fold()
            return Totals(self._count, self._sum, tuple(self._counts), self._failed)

    def drain(self) -> WindowStats:
        """The telemetry window since the last drain (the cumulative totals stay)."""
        with self._lock:
            self._fold()
            stats = WindowStats(self._requests, self._errors, tuple(self._latencies), self._refused)
            self._requests = self._errors = self._refused = 0
            self._latencies.clear()
        return stats
