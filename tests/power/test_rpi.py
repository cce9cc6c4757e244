"""Raspberry Pi 5 PMIC reader on recorded ``vcgencmd pmic_read_adc`` output (see ``boards``)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from edgefleet.agent.power import PowerReadError, RaspberryPi5Reader, parse_pmic_adc
from edgefleet.agent.power.rpi import find_rpi5
from tests.power import boards

# 3V3_SYS .165 + 1V8_SYS .36 + DDR_VDD2 .022 + 1V1_SYS .22 + 0V8_SW .24 + VDD_CORE 1.6 + the
# small ones (3V3_DAC, 3V3_ADC, 0V8_AON, HDMI); 3V7_WL_SW and DDR_VDDQ draw nothing
SMALL = 0.00048840 * 3.31240800 + 0.00024420 * 3.30720300 + 0.00537000 * 0.80232300
PI5_WATTS = 0.165 + 0.36 + 0.022 + 0.22 + 0.24 + 1.6 + SMALL + 0.02198000 * 5.14116000


class Recorded:
    """A runner that answers with recorded output and remembers what it was asked."""

    def __init__(self, output: str | None = boards.PI5_PMIC_ADC) -> None:
        self.output = output
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, args: Sequence[str]) -> str:
        self.calls.append(tuple(args))
        if self.output is None:
            raise subprocess.CalledProcessError(255, list(args), "", "error=2 error_msg=...")
        return self.output


def test_parse_pairs_currents_with_voltages() -> None:
    rails = {r.name: r for r in parse_pmic_adc(boards.PI5_PMIC_ADC)}
    assert len(rails) == 12  # EXT5V and BATT have a voltage only
    assert "EXT5V" not in rails
    assert rails["VDD_CORE"].amps == 2.0
    assert rails["VDD_CORE"].volts == 0.8
    assert rails["VDD_CORE"].watts == pytest.approx(1.6)


@pytest.mark.parametrize(
    "output",
    ["", 'error=1 error_msg="Command not registered"\n', "  VDD_CORE_A current(7)=1.0A\n"],
)
def test_parse_without_pairs_finds_no_rails(output: str) -> None:
    assert parse_pmic_adc(output) == ()


def test_reader_sums_rails_and_runs_the_command() -> None:
    run = Recorded()
    reader = RaspberryPi5Reader(run=run, clock=lambda: 3.0)
    sample = reader.read()
    assert run.calls == [("vcgencmd", "pmic_read_adc")]
    assert sample.at == 3.0
    assert sample.watts == pytest.approx(PI5_WATTS)
    assert sum(r.watts for r in sample.rails) == pytest.approx(PI5_WATTS)
    assert reader.method == "power sensor"


def test_failing_command_raises_power_read_error() -> None:
    with pytest.raises(PowerReadError, match="Raspberry Pi 5"):
        RaspberryPi5Reader(run=Recorded(None)).read()


def test_find_on_a_pi5(tmp_path: Path) -> None:
    boards.raspberry_pi(tmp_path)
    assert isinstance(find_rpi5(tmp_path, run=Recorded()), RaspberryPi5Reader)


def test_find_on_a_pi5_whose_command_fails_gives_a_reason(tmp_path: Path) -> None:
    boards.raspberry_pi(tmp_path)
    reason = find_rpi5(tmp_path, run=Recorded(None))
    assert isinstance(reason, str)
    assert "vcgencmd" in reason or "Raspberry Pi 5" in reason


def test_find_on_a_pi4_is_quietly_none(tmp_path: Path) -> None:
    boards.raspberry_pi(tmp_path, "Raspberry Pi 4 Model B Rev 1.4\x00")
    assert find_rpi5(tmp_path, run=Recorded(None)) is None


def test_find_elsewhere_never_runs_the_command(tmp_path: Path) -> None:
    run = Recorded()
    assert find_rpi5(tmp_path, run=run) is None
    assert run.calls == []
