"""What a power reader returns, and the one interface every reader implements.

A sample is either instantaneous power (``watts``), cumulative energy counters
(``counters``), or both for disjoint sets of sensors: a reader puts each sensor in exactly one
of the two, so ``metering`` can add counter energy to integrated power without counting any
part of the board twice. ``rails`` is the per-rail breakdown for logs and telemetry detail;
it is never summed by the meter.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from edgefleet.common.errors import TransientError

Clock = Callable[[], float]
"""Monotonic seconds; ``time.monotonic`` in the agent, a fake in tests."""

Runner = Callable[[Sequence[str]], str]
"""Runs a command and returns its stdout; raises ``OSError`` or ``subprocess.SubprocessError``."""

ENERGY_COUNTER = "energy counter"
POWER_SENSOR = "power sensor"


@dataclass(frozen=True)
class Rail:
    """One measured rail or sensor, for detail; ``watts`` is instantaneous power."""

    name: str
    watts: float


@dataclass(frozen=True)
class EnergyCounter:
    """A cumulative energy reading; ``wraps_at`` is the counter's range in joules, if it wraps.

    A counter whose ``wraps_at`` is None and that goes backwards was reset: the interval it
    spans is dropped rather than guessed.
    """

    name: str
    joules: float
    wraps_at: float | None = None


@dataclass(frozen=True)
class PowerSample:
    """One reading of a reader at monotonic time ``at`` (seconds)."""

    at: float
    watts: float | None = None
    """Total instantaneous power of the sensors that report power (not those in counters)."""
    counters: tuple[EnergyCounter, ...] = ()
    """Cumulative energy of the sensors that report energy."""
    rails: tuple[Rail, ...] = ()
    """Per-rail detail; informational only."""


class PowerReader(Protocol):
    """A power source found on this device by ``probing.probe``."""

    @property
    def name(self) -> str:
        """What is measured, for the start-up log line: ``RAPL package-0``."""
        ...

    @property
    def method(self) -> str:
        """``ENERGY_COUNTER`` or ``POWER_SENSOR``: how the figure is obtained."""
        ...

    def read(self) -> PowerSample:
        """Read every sensor once; raises ``PowerReadError`` when the sensors cannot be read."""
        ...


class PowerReadError(TransientError):
    """A sensor that was there at probe time could not be read now (.source names it)."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"cannot read power from {source}: {reason}")
        self.source = source
        self.reason = reason


def run_command(args: Sequence[str]) -> str:
    """The default ``Runner``: run ``args`` with a short timeout, return stdout."""
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=5, check=True)
    return done.stdout
