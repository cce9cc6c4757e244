"""Raspberry Pi 5: the PMIC's rail ADCs, through ``vcgencmd pmic_read_adc``.

The firmware prints one line per ADC channel, currents then voltages::

       VDD_CORE_A current(7)=2.34567000A
       ...
       VDD_CORE_V volt(15)=0.81234000V
       EXT5V_V volt(24)=5.12590000V

Power is the sum of ``volts * amps`` over the rails that have both readings. That is what the
PMIC supplies to the SoC, memory and on-board rails; USB devices, fans and conversion losses
on the 5 V input are outside it, and nothing is added for them (no made-up figure). Parsing is
a pure function of the command's output, so tests feed recorded output through the injected
runner. The board is recognised by ``/proc/device-tree/model``; the command is tried only
there (a Pi 4 has ``vcgencmd`` but no PMIC ADC, and the command then fails).
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from edgefleet.agent.power.sample import (
    POWER_SENSOR,
    Clock,
    PowerReadError,
    PowerSample,
    Rail,
    Runner,
    run_command,
)
from edgefleet.agent.power.sysfs import read_text, under

COMMAND = ("vcgencmd", "pmic_read_adc")
MODEL = "/proc/device-tree/model"
_LINE = re.compile(
    r"^\s*(?P<rail>\S+?)_(?P<unit>[AV])\s+(?:current|volt)\(\d+\)=(?P<value>[-+0-9.eE]+)[AV]\s*$"
)


@dataclass(frozen=True)
class PmicRail:
    name: str
    amps: float
    volts: float

    @property
    def watts(self) -> float:
        return self.amps * self.volts


def parse_pmic_adc(output: str) -> tuple[PmicRail, ...]:
    """Rails with both a current and a voltage line, in the order their current appears."""
    amps: dict[str, float] = {}
    volts: dict[str, float] = {}
    for line in output.splitlines():
        m = _LINE.match(line)
        if m is None:
            continue
        (amps if m["unit"] == "A" else volts)[m["rail"]] = float(m["value"])
    return tuple(PmicRail(name, a, volts[name]) for name, a in amps.items() if name in volts)


class RaspberryPi5Reader:
    method = POWER_SENSOR

    def __init__(self, *, run: Runner = run_command, clock: Clock = time.monotonic) -> None:
        self._run = run
        self._clock = clock

    @property
    def name(self) -> str:
        return "Raspberry Pi 5 PMIC (vcgencmd pmic_read_adc)"

    def read(self) -> PowerSample:
        try:
            output = self._run(COMMAND)
        except (OSError, subprocess.SubprocessError) as exc:
            raise PowerReadError(self.name, str(exc)) from exc
        at = self._clock()
        rails = parse_pmic_adc(output)
        if not rails:
            raise PowerReadError(self.name, "no rail with both current and voltage in output")
        watts = sum(r.watts for r in rails)
        return PowerSample(at=at, watts=watts, rails=tuple(Rail(r.name, r.watts) for r in rails))


def find_rpi5(
    root: Path, *, run: Runner = run_command, clock: Clock = time.monotonic
) -> RaspberryPi5Reader | str | None:
    """A reader on a Raspberry Pi whose firmware reads the PMIC ADC; None on other machines."""
    model = read_text(under(root, MODEL)) or ""
    if "Raspberry Pi" not in model:
        return None
    reader = RaspberryPi5Reader(run=run, clock=clock)
    try:
        reader.read()
    except PowerReadError as exc:
        if model.startswith(("Raspberry Pi 5", "Raspberry Pi Compute Module 5")):
            return str(exc)  # the board has the PMIC: say why it cannot be read
        return None  # an older Pi: no PMIC ADC, nothing to explain
    return reader
