"""From power samples to what telemetry reports: average watts and joules per inference.

Pure: an ``EnergyMeter`` is an immutable accumulator over one telemetry window. Energy
between two samples is the counters' increase (wrap-around undone with the counter's range)
plus the trapezoid of instantaneous power. An interval whose energy cannot be known (a counter
reset, a sensor that came or went) is dropped and counted as a gap: the window's average
power then covers the measured intervals only, and its joules, hence joules per inference,
are left out, since they would have to be extrapolated. No inferences means no joules per
inference; no interval yet means no average (an instantaneous sensor's last reading stands).

A counter can be told apart from a wrapped one only if it is read at least once per range:
RAPL's packages wrap after some 260 kJ, about 40 minutes at 100 W, so sample more often.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from edgefleet.agent.power.sample import EnergyCounter, PowerSample


@dataclass(frozen=True)
class PowerReading:
    """One telemetry window's power figures; None where there is no measurement to report."""

    seconds: float
    """Length of the window: first sample to last."""
    watts: float | None
    """Average power over the measured intervals, or the one instantaneous reading so far."""
    joules: float | None
    """Energy used over the whole window, when every interval of it was measured."""
    inferences: int
    joules_per_inference: float | None
    """``joules / inferences``; None without joules or without inferences."""


def counter_delta(old: EnergyCounter, new: EnergyCounter) -> float | None:
    """Joules counted from ``old`` to ``new``; None for a counter that was reset."""
    delta = new.joules - old.joules
    if delta >= 0:
        return delta
    if new.wraps_at is None:
        return None
    delta += new.wraps_at
    return delta if delta >= 0 else None


def interval_joules(a: PowerSample, b: PowerSample) -> float | None:
    """Energy between two samples of the same reader; None when it cannot be known."""
    dt = b.at - a.at
    if dt <= 0 or (a.watts is None) != (b.watts is None):
        return None
    if a.watts is None and not a.counters:
        return None
    before = {c.name: c for c in a.counters}
    if set(before) != {c.name for c in b.counters}:
        return None
    energy = 0.0
    if a.watts is not None and b.watts is not None:
        energy += (a.watts + b.watts) / 2 * dt
    for counter in b.counters:
        delta = counter_delta(before[counter.name], counter)
        if delta is None:
            return None
        energy += delta
    return energy


@dataclass(frozen=True)
class EnergyMeter:
    """Energy over the current window; ``add`` and ``restart`` return new meters."""

    start: PowerSample | None = None
    last: PowerSample | None = None
    joules: float = 0.0
    measured: float = 0.0
    """Seconds covered by intervals whose energy is in ``joules``."""
    gaps: int = 0
    """Intervals dropped because their energy could not be known."""

    def add(self, sample: PowerSample) -> EnergyMeter:
        if self.last is None:
            return replace(self, start=sample, last=sample)
        if sample.at <= self.last.at:  # same instant or out of order: nothing to add
            return self
        joules = interval_joules(self.last, sample)
        if joules is None:
            return replace(self, last=sample, gaps=self.gaps + 1)
        return replace(
            self,
            last=sample,
            joules=self.joules + joules,
            measured=self.measured + (sample.at - self.last.at),
        )

    def reading(self, *, inferences: int) -> PowerReading:
        """The window so far, with ``inferences`` served between its first and last sample."""
        seconds = 0.0 if self.start is None or self.last is None else self.last.at - self.start.at
        watts: float | None = None
        if self.measured > 0:
            watts = self.joules / self.measured
        elif self.last is not None and not self.last.counters:
            watts = self.last.watts
        joules = self.joules if self.measured > 0 and self.gaps == 0 else None
        per_inference = joules / inferences if joules is not None and inferences > 0 else None
        return PowerReading(
            seconds=seconds,
            watts=watts,
            joules=joules,
            inferences=max(inferences, 0),
            joules_per_inference=per_inference,
        )

    def restart(self) -> EnergyMeter:
        """A new window that starts at this window's last sample."""
        return EnergyMeter(start=self.last, last=self.last)

    def tick(self, sample: PowerSample, *, inferences: int) -> tuple[PowerReading, EnergyMeter]:
        """Close the window at ``sample``: its reading, and the meter for the next window."""
        closed = self.add(sample)
        return closed.reading(inferences=inferences), closed.restart()
