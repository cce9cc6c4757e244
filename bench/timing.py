"""The benches' timer: a callable's wall time per call, in microseconds."""

from __future__ import annotations

import time
from collections.abc import Callable


def timed(fn: Callable[[], object], n: int) -> list[float]:
    """``fn()`` called ``n`` times; each call's wall time (``perf_counter_ns``), in µs."""
    out = []
    for _ in range(n):
        start = time.perf_counter_ns()
        fn()
        out.append((time.perf_counter_ns() - start) / 1000.0)
    return out
