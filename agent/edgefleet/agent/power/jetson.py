"""NVIDIA Jetson: the INA3221 power monitors on the carrier board, in both sysfs layouts.

JetPack 4 (L4T 32, Nano / TX2 / Xavier), the downstream ``ina3221x`` IIO driver::

    /sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0/rail_name_0       POM_5V_IN
    /sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0/in_power0_input   mW
    (channels 0, 1, 2; also in_current0_input mA, in_voltage0_input mV)

JetPack 5 and 6 (L4T 35/36, Orin), the upstream ``ina3221`` hwmon driver::

    /sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3/in1_label   VDD_IN
    /sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3/in1_input   bus voltage, mV
    /sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3/curr1_input current, mA
    (channels 1, 2, 3; power = V * I; in4..in7 are shunt voltages and not read)

Boards with a total input rail (``VDD_IN``, ``POM_5V_IN``) report that rail as the device's
power, since the other rails are parts of it; boards without one (AGX Xavier, AGX Orin)
report the sum of their rails, and the reader's name says which. Rails labelled ``NC`` (not
connected), unlabelled or disabled channels are left out.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgefleet.agent.power.sample import POWER_SENSOR, Clock, PowerReadError, PowerSample, Rail
from edgefleet.agent.power.sysfs import read_number, read_text, sorted_glob, under

I2C_DRIVERS = "/sys/bus/i2c/drivers"
TOTAL_RAILS = ("VDD_IN", "POM_5V_IN")
"""Rails that carry the whole module's input power where a board has one."""


@dataclass(frozen=True)
class InaChannel:
    """One INA3221 channel: either a power file (mW) or a voltage (mV) and current (mA) pair."""

    rail: str
    power_mw: Path | None = None
    voltage_mv: Path | None = None
    current_ma: Path | None = None


class JetsonIna3221Reader:
    method = POWER_SENSOR

    def __init__(self, channels: Sequence[InaChannel], *, clock: Clock = time.monotonic) -> None:
        if not channels:
            raise ValueError("JetsonIna3221Reader needs at least one channel")
        self.channels = tuple(channels)
        self._total = next((c.rail for c in self.channels if c.rail in TOTAL_RAILS), None)
        self._clock = clock

    @property
    def name(self) -> str:
        if self._total is not None:
            return f"Jetson INA3221 {self._total} (total input)"
        return "Jetson INA3221 sum of " + ", ".join(c.rail for c in self.channels)

    def read(self) -> PowerSample:
        rails = tuple(Rail(c.rail, self._watts(c)) for c in self.channels)
        at = self._clock()
        if self._total is not None:
            watts = next(r.watts for r in rails if r.name == self._total)
        else:
            watts = sum(r.watts for r in rails)
        return PowerSample(at=at, watts=watts, rails=rails)

    def _watts(self, c: InaChannel) -> float:
        if c.power_mw is not None:
            return read_number(c.power_mw, source=self.name) * 1e-3
        if c.voltage_mv is None or c.current_ma is None:  # pragma: no cover - built by find
            raise PowerReadError(self.name, f"{c.rail}: no power, voltage or current file")
        mv = read_number(c.voltage_mv, source=self.name)
        ma = read_number(c.current_ma, source=self.name)
        return mv * ma * 1e-6


def legacy_channels(device: Path) -> list[InaChannel]:
    """Channels of one ``iio:deviceN`` directory of the JetPack 4 ``ina3221x`` driver."""
    found = []
    for n in range(3):
        rail = read_text(device / f"rail_name_{n}")
        power = device / f"in_power{n}_input"
        if rail and rail != "NC" and power.exists():
            found.append(InaChannel(rail, power_mw=power))
    return found


def hwmon_channels(device: Path) -> list[InaChannel]:
    """Channels of one ``hwmonN`` directory of the JetPack 5/6 ``ina3221`` driver."""
    found = []
    for n in (1, 2, 3):
        rail = read_text(device / f"in{n}_label")
        if not rail or rail == "NC" or read_text(device / f"in{n}_enable") == "0":
            continue
        volts, amps = device / f"in{n}_input", device / f"curr{n}_input"
        if volts.exists() and amps.exists():
            found.append(InaChannel(rail, voltage_mv=volts, current_ma=amps))
    return found


def find_jetson(root: Path, *, clock: Clock = time.monotonic) -> JetsonIna3221Reader | str | None:
    """A reader over every INA3221 channel found; a reason string when they cannot be read."""
    channels: list[InaChannel] = []
    for driver in sorted_glob(under(root, I2C_DRIVERS), "ina3221*"):
        for device in sorted_glob(driver, "*/iio:device*"):
            channels += legacy_channels(device)
        for device in sorted_glob(driver, "*/hwmon/hwmon*"):
            channels += hwmon_channels(device)
    if not channels:
        return None
    reader = JetsonIna3221Reader(channels, clock=clock)
    try:
        reader.read()
    except PowerReadError as exc:
        return str(exc)
    return reader
