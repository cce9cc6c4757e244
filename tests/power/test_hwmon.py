"""Generic hwmon power and energy sensors on fixture trees (layouts in ``boards``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.agent.power import HwmonPowerReader
from edgefleet.agent.power.hwmon import find_hwmon
from tests.power import boards


def found(root: Path) -> HwmonPowerReader:
    reader = find_hwmon(root, clock=lambda: 7.0)
    assert isinstance(reader, HwmonPowerReader)
    return reader


def test_power_and_energy_sensors(tmp_path: Path) -> None:
    boards.hwmon_sensors(tmp_path)
    reader = found(tmp_path)
    # natural order: hwmon10 after hwmon2; the pmic's power is covered by its energy counter
    assert reader.name == "hwmon power_meter/power1, ina226/VDD_MAIN, pmic/energy1"
    assert reader.method == "energy counter + power sensor"
    sample = reader.read()
    assert sample.at == 7.0
    assert sample.watts == pytest.approx(9.5)
    assert {r.name: r.watts for r in sample.rails} == pytest.approx(
        {"power_meter/power1": 7.5, "ina226/VDD_MAIN": 2.0}
    )
    [counter] = sample.counters
    assert (counter.name, counter.wraps_at) == ("pmic/energy1", None)
    assert counter.joules == pytest.approx(42.0)


def test_input_is_preferred_to_average(tmp_path: Path) -> None:
    boards.write(tmp_path, "sys/class/hwmon/hwmon0/name", "ina260")
    boards.write(tmp_path, "sys/class/hwmon/hwmon0/power1_average", 1_000_000)
    boards.write(tmp_path, "sys/class/hwmon/hwmon0/power1_input", 3_000_000)
    assert found(tmp_path).read().watts == pytest.approx(3.0)
    assert found(tmp_path).method == "power sensor"


def test_unreadable_sensor_is_skipped(tmp_path: Path) -> None:
    boards.write(tmp_path, "sys/class/hwmon/hwmon0/name", "amdgpu")
    (tmp_path / "sys/class/hwmon/hwmon0/power1_average").mkdir()  # stands in for ENODATA
    boards.write(tmp_path, "sys/class/hwmon/hwmon1/name", "ina226")
    boards.write(tmp_path, "sys/class/hwmon/hwmon1/power1_input", 1_500_000)
    assert found(tmp_path).name == "hwmon ina226/power1"


def test_jetson_ina3221_hwmon_is_left_to_the_jetson_reader(tmp_path: Path) -> None:
    boards.jetson_orin_nano(tmp_path)
    assert (tmp_path / "sys/class/hwmon/hwmon1/in1_input").exists()
    assert find_hwmon(tmp_path) is None


def test_temperatures_only_means_none(tmp_path: Path) -> None:
    boards.write(tmp_path, "sys/class/hwmon/hwmon0/name", "cpu_thermal")
    boards.write(tmp_path, "sys/class/hwmon/hwmon0/temp1_input", 45000)
    assert find_hwmon(tmp_path) is None
    assert find_hwmon(tmp_path / "nothing") is None
