"""Generic Linux ``hwmon`` power and energy sensors (ACPI power meters, INA2xx, SoC PMICs).

Layout (hwmon sysfs ABI; some older drivers put the attributes under ``hwmonN/device/``)::

    /sys/class/hwmon/hwmon2/name             ina226
    /sys/class/hwmon/hwmon2/power1_input     µW, instantaneous
    /sys/class/hwmon/hwmon2/power1_average   µW, averaged by the chip (when no _input)
    /sys/class/hwmon/hwmon2/power1_label     optional
    /sys/class/hwmon/hwmon4/energy1_input    µJ, cumulative (64-bit, a decrease is a reset)

Where a device has energy counters its power attributes are not read: the counters measure
the same rails, better. Every other sensor found is added up, so this reader comes last in
the probe order, after the board-specific ones that know which rail is the total. Jetson's
``ina3221`` hwmon devices expose voltage and current only and are left to ``jetson``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgefleet.agent.power.sample import (
    ENERGY_COUNTER,
    POWER_SENSOR,
    Clock,
    EnergyCounter,
    PowerSample,
    Rail,
)
from edgefleet.agent.power.sysfs import read_number, read_text, readable_number, sorted_glob, under

HWMON = "/sys/class/hwmon"
SKIPPED_DRIVERS = frozenset({"ina3221"})
_ATTR = re.compile(r"^(power|energy)(\d+)_(input|average)$")


@dataclass(frozen=True)
class HwmonChannel:
    """One sensor attribute: ``energy`` counters in µJ, ``power`` in µW."""

    name: str
    path: Path
    energy: bool


class HwmonPowerReader:
    def __init__(self, channels: Sequence[HwmonChannel], *, clock: Clock = time.monotonic) -> None:
        if not channels:
            raise ValueError("HwmonPowerReader needs at least one channel")
        self.channels = tuple(channels)
        self._clock = clock

    @property
    def name(self) -> str:
        return "hwmon " + ", ".join(c.name for c in self.channels)

    @property
    def method(self) -> str:
        kinds = {ENERGY_COUNTER if c.energy else POWER_SENSOR for c in self.channels}
        return " + ".join(sorted(kinds))

    def read(self) -> PowerSample:
        counters: list[EnergyCounter] = []
        rails: list[Rail] = []
        for c in self.channels:
            value = read_number(c.path, source=self.name)
            if c.energy:
                counters.append(EnergyCounter(c.name, value * 1e-6))
            else:
                rails.append(Rail(c.name, value * 1e-6))
        at = self._clock()
        watts = sum(r.watts for r in rails) if rails else None
        return PowerSample(at=at, watts=watts, counters=tuple(counters), rails=tuple(rails))


def device_channels(hwmon: Path) -> list[HwmonChannel]:
    """The readable power or energy channels of one ``hwmonN`` directory."""
    driver = read_text(hwmon / "name") or hwmon.name
    if driver in SKIPPED_DRIVERS:
        return []
    attrs = _attributes(hwmon) or _attributes(hwmon / "device")
    energy = sorted(n for kind, n in attrs if kind == "energy")
    wanted = (
        [("energy", n, attrs[("energy", n)]) for n in energy]
        if energy
        else [("power", n, attrs[("power", n)]) for n in sorted({n for _, n in attrs})]
    )
    channels = []
    for kind, n, path in wanted:
        if not readable_number(path):  # e.g. ENODATA from a sensor that is powered down
            continue
        label = read_text(path.with_name(f"{kind}{n}_label")) or f"{kind}{n}"
        channels.append(HwmonChannel(f"{driver}/{label}", path, energy=kind == "energy"))
    return channels


def find_hwmon(root: Path, *, clock: Clock = time.monotonic) -> HwmonPowerReader | None:
    channels: list[HwmonChannel] = []
    for hwmon in sorted_glob(under(root, HWMON), "hwmon*"):
        channels += device_channels(hwmon)
    return HwmonPowerReader(channels, clock=clock) if channels else None


def _attributes(directory: Path) -> dict[tuple[str, int], Path]:
    """``(kind, index) -> path`` of the power/energy attributes, ``_input`` over ``_average``."""
    found: dict[tuple[str, int], Path] = {}
    for path in sorted(directory.glob("*_*")):
        m = _ATTR.match(path.name)
        if m is None:
            continue
        key = (m.group(1), int(m.group(2)))
        if m.group(3) == "input" or key not in found:
            found[key] = path
    return found
