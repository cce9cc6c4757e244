"""The pure energy meter: tables of samples in, watts and joules per inference out."""

from __future__ import annotations

import pytest

from edgefleet.agent.power import EnergyCounter, EnergyMeter, PowerSample
from edgefleet.agent.power.metering import counter_delta, interval_joules


def c(joules: float, wraps_at: float | None = None, name: str = "package-0") -> EnergyCounter:
    return EnergyCounter(name, joules, wraps_at)


def counters(at: float, *values: float, wraps_at: float | None = 100.0) -> PowerSample:
    return PowerSample(at=at, counters=tuple(c(v, wraps_at, f"p{i}") for i, v in enumerate(values)))


def watts(at: float, w: float) -> PowerSample:
    return PowerSample(at=at, watts=w)


@pytest.mark.parametrize(
    ("old", "new", "delta"),
    [
        (c(10.0), c(15.0), 5.0),
        (c(10.0), c(10.0), 0.0),
        (c(98.0, 100.0), c(3.0, 100.0), 5.0),  # wrapped once
        (c(10.0), c(3.0), None),  # went back without a range: a reset
        (c(10.0, 5.0), c(3.0, 5.0), None),  # a range smaller than the drop: nonsense
    ],
)
def test_counter_delta(old: EnergyCounter, new: EnergyCounter, delta: float | None) -> None:
    assert counter_delta(old, new) == (None if delta is None else pytest.approx(delta))


@pytest.mark.parametrize(
    ("a", "b", "joules"),
    [
        (watts(0, 2.0), watts(2, 4.0), 6.0),  # trapezoid
        (counters(0, 1.0, 10.0), counters(1, 3.0, 13.0), 5.0),  # two packages add up
        (counters(0, 99.0), counters(1, 1.0), 2.0),  # wrap
        (
            PowerSample(at=0, watts=1.0, counters=(c(1.0),)),
            PowerSample(at=2, watts=3.0, counters=(c(2.0),)),
            5.0,
        ),  # disjoint sensors: counter energy plus integrated power
        (watts(1, 2.0), watts(1, 2.0), None),  # no time passed
        (watts(0, 2.0), counters(1, 1.0), None),  # the sensors changed
        (counters(0, 1.0), counters(1, 1.0, 2.0), None),  # a counter appeared
        (counters(0, 5.0, wraps_at=None), counters(1, 1.0, wraps_at=None), None),  # reset
        (PowerSample(at=0), PowerSample(at=1), None),  # nothing measured at all
    ],
)
def test_interval_joules(a: PowerSample, b: PowerSample, joules: float | None) -> None:
    assert interval_joules(a, b) == (None if joules is None else pytest.approx(joules))


@pytest.mark.parametrize(
    ("samples", "inferences", "seconds", "avg", "joules", "per_inference"),
    [
        ([], 5, 0.0, None, None, None),
        ([watts(0, 4.0)], 5, 0.0, 4.0, None, None),  # one reading: its power, no energy yet
        ([counters(0, 1.0)], 5, 0.0, None, None, None),  # a counter alone says nothing
        ([watts(0, 4.0), watts(1, 6.0), watts(3, 6.0)], 34, 3.0, 17 / 3, 17.0, 0.5),
        ([counters(0, 10.0), counters(2, 30.0)], 0, 2.0, 10.0, 20.0, None),  # no inferences
        ([counters(0, 10.0), counters(2, 30.0)], 40, 2.0, 10.0, 20.0, 0.5),
        ([counters(0, 90.0), counters(1, 10.0)], 4, 1.0, 20.0, 20.0, 5.0),  # wrap
        # a reset in the middle: the average covers the measured seconds, joules are absent
        (
            [
                counters(0, 10.0, wraps_at=None),
                counters(1, 12.0, wraps_at=None),
                counters(2, 1.0, wraps_at=None),
                counters(4, 5.0, wraps_at=None),
            ],
            10,
            4.0,
            2.0,
            None,
            None,
        ),
        ([watts(0, 2.0), watts(0, 9.0), watts(-1, 9.0), watts(1, 2.0)], 1, 1.0, 2.0, 2.0, 2.0),
    ],
    ids=[
        "empty",
        "one-power-reading",
        "one-counter-reading",
        "trapezoids",
        "no-inferences",
        "counters",
        "wrap",
        "reset-gap",
        "stale-samples-ignored",
    ],
)
def test_meter_window(
    samples: list[PowerSample],
    inferences: int,
    seconds: float,
    avg: float | None,
    joules: float | None,
    per_inference: float | None,
) -> None:
    meter = EnergyMeter()
    for sample in samples:
        meter = meter.add(sample)
    reading = meter.reading(inferences=inferences)
    assert reading.seconds == pytest.approx(seconds)
    assert reading.watts == (None if avg is None else pytest.approx(avg))
    assert reading.joules == (None if joules is None else pytest.approx(joules))
    assert reading.joules_per_inference == (
        None if per_inference is None else pytest.approx(per_inference)
    )
    assert reading.inferences == inferences


def test_tick_starts_the_next_window_at_the_last_sample() -> None:
    first, meter = EnergyMeter().tick(counters(0, 0.0), inferences=0)
    assert first.joules is None
    second, meter = meter.tick(counters(10, 50.0), inferences=100)
    assert (second.seconds, second.watts, second.joules_per_inference) == (10.0, 5.0, 0.5)
    third, meter = meter.tick(counters(20, 70.0), inferences=4)
    assert (third.seconds, third.watts, third.joules_per_inference) == (10.0, 2.0, 5.0)
    assert meter.start == meter.last == counters(20, 70.0)


def test_meter_is_immutable() -> None:
    meter = EnergyMeter()
    meter.add(watts(0, 1.0))
    assert meter == EnergyMeter()
