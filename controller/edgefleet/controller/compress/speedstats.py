"""Is a candidate faster than the original, beyond the noise? Interleaved rounds and a CI.

Timing the original once and the candidate later compares two moments of a machine as much
as two models (another process, the CPU's clock, the cache): the same candidate measured
1.08x slower in one run and 1.54x faster in the next. So the two are timed in rounds, each
round one turn of each (alternating which goes first: ABBA...), and every round gives one
ratio, candidate latency / original latency, measured under the same conditions. The speed
ratio is the median of the rounds' ratios, with a distribution-free confidence interval for
that median (order statistics of the ratios: no assumption on their distribution, and the
interval always contains the median). Rounds go on until the interval's half-width is within
``target`` of the ratio (after ``min_rounds``), ``max_rounds``, or the time budget.

A candidate is *faster* only when the interval's upper bound is below 1, *slower* only when
its lower bound is above 1; otherwise the two are the same speed as far as can be told. Pure:
the turns and the clock are passed in (``timing.compare`` times real sessions).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

CONFIDENCE = 0.95

ORIGINAL, CANDIDATE = 0, 1


@dataclass(frozen=True)
class Plan:
    """How long to keep timing: until the CI's relative half-width is at most ``target``
    (checked from ``min_rounds`` on), or ``max_rounds``, or ``budget_s`` seconds."""

    min_rounds: int = 6
    max_rounds: int = 40
    target: float = 0.05
    budget_s: float = 10.0
    confidence: float = CONFIDENCE


@dataclass(frozen=True)
class SpeedRatio:
    """Candidate / original latency at ``threads`` intra-op threads (< 1: faster)."""

    threads: int
    ratio: float  # the median of the rounds' ratios
    low: float  # the confidence interval for that median
    high: float
    rounds: int
    coverage: float  # the interval's confidence (below ``confidence`` with too few rounds)
    seconds: float  # how long the timing took
    original_ms: float  # the median of the original's turns (ms per run)
    candidate_ms: float
    confidence: float = CONFIDENCE

    @property
    def certain(self) -> bool:
        """The interval has the confidence asked for (enough rounds)."""
        return self.rounds > 0 and self.coverage >= self.confidence - 1e-9

    @property
    def faster(self) -> bool:
        """Faster than the original beyond the noise."""
        return self.certain and self.high < 1.0

    @property
    def slower(self) -> bool:
        """Slower than the original beyond the noise."""
        return self.certain and self.low > 1.0

    @property
    def half_width(self) -> float:
        """The interval's half-width relative to the ratio (0.05: +-5%)."""
        if self.rounds == 0 or not self.ratio > 0:
            return math.inf
        return (self.high - self.low) / 2 / self.ratio

    def describe(self) -> str:
        """``0.62x [0.60, 0.65] at 1 thread (12 rounds)``; ``x`` < 1 is faster."""
        unit = "thread" if self.threads == 1 else "threads"
        noise = "" if self.certain else ", too few rounds to tell"
        return (
            f"{self.ratio:.2f}x [{self.low:.2f}, {self.high:.2f}] at {self.threads} {unit} "
            f"({self.rounds} rounds{noise})"
        )


def median_ci(
    values: Sequence[float], confidence: float = CONFIDENCE
) -> tuple[float, float, float]:
    """(median, low, high): the sample median and the narrowest symmetric order-statistic
    interval [x_(k), x_(n+1-k)] whose coverage of the true median is at least ``confidence``
    (binomial(n, 1/2)); with too few values for that, the full range. See ``coverage``."""
    xs = sorted(values)
    n = len(xs)
    if n == 0:
        raise ValueError("no values")
    k = _rank(n, confidence)
    return _median(xs), xs[k - 1], xs[n - k]


def coverage(n: int, confidence: float = CONFIDENCE) -> float:
    """The confidence of ``median_ci``'s interval for ``n`` values."""
    k = _rank(n, confidence)
    return 1.0 - 2.0 * _binom_cdf(k - 1, n)


def interleaved(
    turn: Callable[[int], float],
    *,
    threads: int,
    plan: Plan = Plan(),
    clock: Callable[[], float] = time.perf_counter,
) -> SpeedRatio:
    """Time ``turn(ORIGINAL)`` and ``turn(CANDIDATE)`` (each returns one turn's latency in ms
    per run) in alternating order, round after round, per ``plan``; at least one round."""
    started = clock()
    ratios: list[float] = []
    turns: tuple[list[float], list[float]] = ([], [])
    while True:
        order = (ORIGINAL, CANDIDATE) if len(ratios) % 2 == 0 else (CANDIDATE, ORIGINAL)
        got = {which: turn(which) for which in order}
        for which, ms in got.items():
            turns[which].append(ms)
        ratios.append(got[CANDIDATE] / max(got[ORIGINAL], 1e-12))
        n = len(ratios)
        if n >= plan.max_rounds or clock() - started >= plan.budget_s:
            break
        if n >= plan.min_rounds:
            med, low, high = median_ci(ratios, plan.confidence)
            if (high - low) / 2 <= plan.target * med:
                break
    med, low, high = median_ci(ratios, plan.confidence)
    return SpeedRatio(
        threads,
        med,
        low,
        high,
        len(ratios),
        coverage(len(ratios), plan.confidence),
        clock() - started,
        _median(sorted(turns[ORIGINAL])),
        _median(sorted(turns[CANDIDATE])),
        plan.confidence,
    )


def _median(xs: Sequence[float]) -> float:
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def _rank(n: int, confidence: float) -> int:
    """The largest k >= 1 with 1 - 2 P(B <= k-1) >= confidence, B ~ binomial(n, 1/2); 1 when
    none is (then the interval is the range, with less confidence)."""
    alpha = 1.0 - confidence
    k = 1
    while k + 1 <= (n + 1) // 2 and 2.0 * _binom_cdf(k, n) <= alpha:
        k += 1
    return k


def _binom_cdf(k: int, n: int) -> float:
    """P(B <= k) for B ~ binomial(n, 1/2)."""
    return sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
