"""Jetson INA3221 readers against fixture trees of real boards (layouts in ``boards``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.agent.power import JetsonIna3221Reader, PowerReader, PowerReadError
from edgefleet.agent.power.jetson import find_jetson
from tests.power import boards


def found(root: Path) -> JetsonIna3221Reader:
    reader = find_jetson(root, clock=lambda: 12.5)
    assert isinstance(reader, JetsonIna3221Reader), reader
    return reader


@pytest.mark.parametrize(
    ("build", "name", "watts", "rails"),
    [
        (
            boards.jetson_nano,
            "Jetson INA3221 POM_5V_IN (total input)",
            3.0,
            {"POM_5V_IN": 3.0, "POM_5V_GPU": 0.5, "POM_5V_CPU": 1.0},
        ),
        (
            boards.jetson_agx_xavier,
            "Jetson INA3221 sum of GPU, CPU, SOC, CV, VDDRQ, SYS5V",
            7.5,
            {"GPU": 1.0, "CPU": 2.0, "SOC": 1.5, "CV": 0.0, "VDDRQ": 0.5, "SYS5V": 2.5},
        ),
        (
            boards.jetson_orin_nano,
            "Jetson INA3221 VDD_IN (total input)",
            6.0,
            {"VDD_IN": 6.0, "VDD_CPU_GPU_CV": 2.0, "VDD_SOC": 1.5},
        ),
        (
            boards.jetson_agx_orin,
            "Jetson INA3221 sum of VDD_GPU_SOC, VDD_CPU_CV, VIN_SYS_5V0, VDDQ_VDD2_1V8AO",
            10.0,
            {"VDD_GPU_SOC": 4.0, "VDD_CPU_CV": 3.0, "VIN_SYS_5V0": 2.0, "VDDQ_VDD2_1V8AO": 1.0},
        ),
    ],
    ids=["nano-jp4", "agx-xavier-jp4", "orin-nano-jp6", "agx-orin-jp6"],
)
def test_board_layouts(
    tmp_path: Path, build: object, name: str, watts: float, rails: dict[str, float]
) -> None:
    assert callable(build)
    build(tmp_path)
    reader: PowerReader = found(tmp_path)
    sample = reader.read()
    assert reader.name == name
    assert reader.method == "power sensor"
    assert sample.at == 12.5
    assert sample.watts == pytest.approx(watts)
    assert {r.name: r.watts for r in sample.rails} == pytest.approx(rails)
    assert sample.counters == ()


def test_legacy_power_file_is_in_milliwatts_and_follows_the_reading(tmp_path: Path) -> None:
    base = boards.jetson_jp4(
        tmp_path, "7-0040", {"VDD_IN": 4321, "VDD_CPU_GPU_CV": 1, "VDD_SOC": 2}
    )
    reader = found(tmp_path)
    assert reader.read().watts == pytest.approx(4.321)
    (base / "in_power0_input").write_text("1234\n")
    assert reader.read().watts == pytest.approx(1.234)


def test_disabled_and_unlabelled_hwmon_channels_are_left_out(tmp_path: Path) -> None:
    rel = boards.jetson_jp5(
        tmp_path, "1-0040", 1, [("VDD_IN", 5000, 1000), ("VDD_SOC", 5000, 200), ("X", 5, 5)]
    )
    (rel / "in2_enable").write_text("0\n")
    (rel / "in3_label").unlink()
    reader = found(tmp_path)
    assert [c.rail for c in reader.channels] == ["VDD_IN"]


def test_no_ina3221_means_no_reader(tmp_path: Path) -> None:
    boards.hwmon_sensors(tmp_path)
    (tmp_path / "sys/bus/i2c/drivers/lm75").mkdir(parents=True)
    assert find_jetson(tmp_path) is None


def test_sensor_that_vanishes_raises_power_read_error(tmp_path: Path) -> None:
    rel = boards.jetson_jp5(tmp_path, "1-0040", 1, [("VDD_IN", 5000, 1000)])
    reader = found(tmp_path)
    (rel / "curr1_input").unlink()
    with pytest.raises(PowerReadError, match="curr1_input") as info:
        reader.read()
    assert info.value.source == reader.name


def test_unreadable_value_at_probe_is_a_reason(tmp_path: Path) -> None:
    base = boards.jetson_jp4(tmp_path, "6-0040", {"POM_5V_IN": 1, "POM_5V_GPU": 1, "POM_5V_CPU": 1})
    (base / "in_power1_input").write_text("garbage\n")
    reason = find_jetson(tmp_path)
    assert isinstance(reason, str)
    assert "not a number" in reason
