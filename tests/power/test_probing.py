"""Probe order and the start-up line, on fixture trees of several boards at once."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from edgefleet.agent.power import (
    HwmonPowerReader,
    JetsonIna3221Reader,
    ProbeResult,
    RaplReader,
    RaspberryPi5Reader,
    describe,
    probe,
)
from tests.power import boards


def pi5_output(args: Sequence[str]) -> str:
    assert tuple(args) == ("vcgencmd", "pmic_read_adc")
    return boards.PI5_PMIC_ADC


def no_command(args: Sequence[str]) -> str:
    raise FileNotFoundError(2, "No such file or directory", args[0])


def test_nothing_found(tmp_path: Path) -> None:
    result = probe(tmp_path, run=no_command)
    assert result == ProbeResult(None, ())
    assert describe(result) == "power: no sensor found; power metrics absent"


def test_jetson_wins_over_the_generic_hwmon(tmp_path: Path) -> None:
    boards.jetson_orin_nano(tmp_path)
    boards.hwmon_sensors(tmp_path)
    result = probe(tmp_path, run=no_command)
    assert isinstance(result.reader, JetsonIna3221Reader)
    assert describe(result) == "power: Jetson INA3221 VDD_IN (total input) (power sensor)"


def test_pi5(tmp_path: Path) -> None:
    boards.raspberry_pi(tmp_path)
    result = probe(tmp_path, run=pi5_output)
    assert isinstance(result.reader, RaspberryPi5Reader)


def test_rapl_wins_over_hwmon(tmp_path: Path) -> None:
    boards.rapl_amd(tmp_path)
    boards.hwmon_sensors(tmp_path)
    result = probe(tmp_path, run=no_command)
    assert isinstance(result.reader, RaplReader)
    assert describe(result) == "power: RAPL package-0 (energy counter)"


def test_unusable_sensors_leave_reasons(tmp_path: Path) -> None:
    boards.raspberry_pi(tmp_path)
    energy = boards.rapl_zone(tmp_path, "intel-rapl:0", "package-0")
    energy.unlink()
    energy.mkdir()

    def failing(args: Sequence[str]) -> str:
        raise subprocess.TimeoutExpired(list(args), 5)

    result = probe(tmp_path, run=failing)
    assert result.reader is None
    assert len(result.reasons) == 2
    line = describe(result)
    assert line.startswith("power: no usable sensor; power metrics absent (")
    assert "Raspberry Pi 5 PMIC" in line
    assert "RAPL package-0: cannot read energy_uj: Is a directory" in line

    boards.hwmon_sensors(tmp_path)
    result = probe(tmp_path, run=failing)
    assert isinstance(result.reader, HwmonPowerReader)
    assert len(result.reasons) == 2


def test_kinds_narrow_the_probe(tmp_path: Path) -> None:
    boards.rapl_amd(tmp_path)
    boards.hwmon_sensors(tmp_path)
    assert isinstance(probe(tmp_path, kinds=["hwmon"]).reader, HwmonPowerReader)
    assert probe(tmp_path, kinds=[]).reader is None
    with pytest.raises(ValueError, match="nvml"):
        probe(tmp_path, kinds=["nvml"])
