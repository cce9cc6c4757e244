"""The speed gate's statistics on constructed timings: deterministic, no real CPU timing."""

from __future__ import annotations

import itertools
import math

import pytest

from edgefleet.controller.compress import speedstats
from edgefleet.controller.compress.speedstats import CANDIDATE, ORIGINAL, Plan, SpeedRatio


class FakeClock:
    """Each call advances ``step`` seconds."""

    def __init__(self, step: float = 0.0) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_median_ci_uses_order_statistics() -> None:
    values = [float(v) for v in range(1, 11)]  # n = 10: [x_2, x_9] covers 97.9%
    med, low, high = speedstats.median_ci(values)
    assert (med, low, high) == (5.5, 2.0, 9.0)
    assert speedstats.coverage(10) == pytest.approx(1 - 2 * 11 / 1024)
    assert speedstats.coverage(6) == pytest.approx(1 - 2 / 64)  # the range, 96.9%
    assert speedstats.coverage(5) < 0.95  # too few values for 95%
    with pytest.raises(ValueError):
        speedstats.median_ci([])


def test_the_interval_always_contains_the_median() -> None:
    for n in range(1, 40):
        values = [math.sin(i * 1.7) + 2 for i in range(n)]
        med, low, high = speedstats.median_ci(values)
        assert low <= med <= high


def test_rounds_alternate_which_goes_first() -> None:
    order: list[int] = []

    def turn(which: int) -> float:
        order.append(which)
        return 1.0

    speedstats.interleaved(turn, threads=1, plan=Plan(min_rounds=4, max_rounds=4))
    assert order == [ORIGINAL, CANDIDATE, CANDIDATE, ORIGINAL] * 2


def test_a_steady_speedup_stops_at_min_rounds_and_is_faster() -> None:
    ms = {ORIGINAL: 10.0, CANDIDATE: 6.0}
    sr = speedstats.interleaved(lambda w: ms[w], threads=1, plan=Plan(min_rounds=6))
    assert sr.rounds == 6 and sr.ratio == pytest.approx(0.6)
    assert sr.low == sr.high == pytest.approx(0.6)
    assert sr.faster and not sr.slower and sr.certain
    assert (sr.original_ms, sr.candidate_ms) == (10.0, 6.0)
    assert sr.describe() == "0.60x [0.60, 0.60] at 1 thread (6 rounds)"


def test_drift_that_hits_both_alike_cancels_out() -> None:
    """The machine slows down over time (another process starts): each round's ratio is
    still the true one, where timing one then the other would have seen 1.5x."""
    calls = itertools.count()

    def turn(which: int) -> float:
        load = 1.0 + next(calls) * 0.05  # every turn 5% slower than the one before
        return load * (8.0 if which == CANDIDATE else 10.0)

    sr = speedstats.interleaved(turn, threads=2, plan=Plan(min_rounds=8, max_rounds=8))
    assert 0.75 < sr.ratio < 0.85 and 0.7 < sr.low <= sr.ratio <= sr.high < 0.9
    assert sr.faster


def test_noise_around_the_same_speed_is_neither_faster_nor_slower() -> None:
    wobble = itertools.cycle([0.8, 1.25, 1.0, 0.9, 1.1, 1.2, 0.85])

    def turn(which: int) -> float:
        return 5.0 * next(wobble) if which == CANDIDATE else 5.0

    sr = speedstats.interleaved(turn, threads=1, plan=Plan(min_rounds=6, max_rounds=30))
    assert sr.rounds == 30  # never tight: +-5% is not reached
    assert sr.low < 1.0 < sr.high and not sr.faster and not sr.slower
    assert sr.half_width > 0.05


def test_a_consistent_slowdown_is_slower() -> None:
    wobble = itertools.cycle([1.0, 1.02, 0.98])
    sr = speedstats.interleaved(
        lambda w: 2.4 * next(wobble) if w == CANDIDATE else 1.0, threads=2, plan=Plan()
    )
    assert sr.slower and not sr.faster and sr.ratio > 2


def test_the_budget_ends_the_rounds_and_too_few_rounds_decide_nothing() -> None:
    ms = {ORIGINAL: 10.0, CANDIDATE: 5.0}
    sr = speedstats.interleaved(
        lambda w: ms[w], threads=1, plan=Plan(budget_s=2.5), clock=FakeClock(step=1.0)
    )
    assert sr.rounds == 3 and sr.seconds > 0  # 1 s a round: over 2.5 s after the third
    assert not sr.certain and not sr.faster  # 3 rounds: no 95% interval
    assert "too few rounds" in sr.describe()


def test_half_width_of_an_empty_ratio() -> None:
    sr = SpeedRatio(1, math.nan, math.nan, math.nan, 0, 0.0, 0.0, math.nan, math.nan)
    assert sr.half_width == math.inf and not sr.certain
