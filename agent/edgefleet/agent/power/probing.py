"""Choosing the power reader for this device, once at start, and saying what was chosen.

Order: board-specific readers first, since they know which rail is the board's total (Jetson
INA3221, then Raspberry Pi 5's PMIC); then RAPL, an exact energy counter for the CPU packages
of x86 machines; then generic ``hwmon`` sensors, which are only added up. The first reader that
is there and readable wins. A sensor that is there but cannot be read leaves a reason, so the
start-up line says why power metrics are absent instead of nothing at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from edgefleet.agent.power.hwmon import find_hwmon
from edgefleet.agent.power.jetson import find_jetson
from edgefleet.agent.power.rapl import find_rapl
from edgefleet.agent.power.rpi import find_rpi5
from edgefleet.agent.power.sample import Clock, PowerReader, Runner, run_command

KINDS: Final = ("jetson", "rpi5", "rapl", "hwmon")
"""Reader kinds in probe order; ``probe(kinds=...)`` narrows them (an agent setting)."""

Finder = Callable[[Path, Runner, Clock], PowerReader | str | None]

_FINDERS: Final[dict[str, Finder]] = {
    "jetson": lambda root, _run, clock: find_jetson(root, clock=clock),
    "rpi5": lambda root, run, clock: find_rpi5(root, run=run, clock=clock),
    "rapl": lambda root, _run, clock: find_rapl(root, clock=clock),
    "hwmon": lambda root, _run, clock: find_hwmon(root, clock=clock),
}


@dataclass(frozen=True)
class ProbeResult:
    reader: PowerReader | None
    """The chosen reader; None when this device has no usable power sensor."""
    reasons: tuple[str, ...] = ()
    """Why sensors that are present could not be used, in probe order."""


def probe(
    root: Path = Path("/"),
    *,
    run: Runner = run_command,
    clock: Clock = time.monotonic,
    kinds: Collection[str] = KINDS,
) -> ProbeResult:
    """Try each reader kind in ``KINDS`` order (those in ``kinds``); the first usable wins."""
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown power reader kinds {sorted(unknown)}; known: {KINDS}")
    reasons: list[str] = []
    for kind in KINDS:
        if kind not in kinds:
            continue
        found = _FINDERS[kind](root, run, clock)
        if isinstance(found, str):
            reasons.append(found)
        elif found is not None:
            return ProbeResult(found, tuple(reasons))
    return ProbeResult(None, tuple(reasons))


def describe(result: ProbeResult) -> str:
    """The agent's start-up line about power, e.g. ``power: RAPL package-0 (energy counter)``."""
    if result.reader is not None:
        return f"power: {result.reader.name} ({result.reader.method})"
    if not result.reasons:
        return "power: no sensor found; power metrics absent"
    return "power: no usable sensor; power metrics absent (" + "; ".join(result.reasons) + ")"
