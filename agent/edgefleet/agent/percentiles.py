"""Percentiles of latency samples, as ``numpy.percentile`` computes them (its default
``linear`` method, bit for bit), without ``numpy.percentile``.

``numpy.percentile`` imports ``numpy.ma`` on its first call (about 1.3 MB of an idle agent's
resident set); the agent computes percentiles in telemetry, the health watch, the
pre-activation check and benchmarks, so it would always hold it. Here: one sort and, per
percentile, numpy's own interpolation (``_lerp``: from the upper neighbour once past halfway).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np


def percentiles(values: Iterable[float] | np.ndarray, qs: Sequence[float]) -> list[float]:
    """``[numpy.percentile(values, q) for q in qs]``, as floats; ``ValueError`` when empty."""
    ordered = np.sort(np.asarray(values, dtype=np.float64), axis=None).tolist()
    n = len(ordered)
    if n == 0:
        raise ValueError("percentiles of no values")
    out = []
    for q in qs:
        if not 0.0 <= q <= 100.0:
            raise ValueError(f"percentile {q} is not in [0, 100]")
        at = (n - 1) * (q / 100.0)
        below = min(max(math.floor(at), 0), n - 1)
        above = min(below + 1, n - 1)
        gamma = at - below
        a, b = ordered[below], ordered[above]
        diff = b - a
        out.append(b - diff * (1.0 - gamma) if gamma >= 0.5 else a + diff * gamma)
    return out
