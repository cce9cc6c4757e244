"""RAPL through powercap: fixture trees of Intel and AMD machines, and the real one if readable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgefleet.agent.power import EnergyMeter, PowerReadError, RaplReader
from edgefleet.agent.power.rapl import find_rapl, package_domains
from tests.power import boards


def test_intel_reads_packages_only(tmp_path: Path) -> None:
    boards.rapl_intel(tmp_path)
    reader = find_rapl(tmp_path, clock=lambda: 1.0)
    assert isinstance(reader, RaplReader)
    assert reader.name == "RAPL package-0+package-1"
    assert reader.method == "energy counter"
    sample = reader.read()
    assert [(c.name, c.joules) for c in sample.counters] == [("package-0", 1.0), ("package-1", 5.0)]
    assert sample.counters[0].wraps_at == pytest.approx(262143.32885)
    assert sample.watts is None


def test_amd_layout_is_the_same_interface(tmp_path: Path) -> None:
    boards.rapl_amd(tmp_path)
    reader = find_rapl(tmp_path)
    assert isinstance(reader, RaplReader)
    assert reader.name == "RAPL package-0"
    [counter] = reader.read().counters
    assert counter.joules == 2.0
    assert counter.wraps_at == pytest.approx(65532.610987)


def test_missing_range_means_no_wrap(tmp_path: Path) -> None:
    energy = boards.rapl_zone(tmp_path, "intel-rapl:0", "package-0", uj=5)
    (energy.parent / "max_energy_range_uj").unlink()
    [domain] = package_domains(tmp_path)
    assert domain.wraps_at is None


def test_counter_wrap_through_the_meter(tmp_path: Path) -> None:
    energy = boards.rapl_zone(tmp_path, "intel-rapl:0", "package-0", uj=999_000_000, wrap=10**9)
    now = [0.0]
    reader = find_rapl(tmp_path, clock=lambda: now[0])
    assert isinstance(reader, RaplReader)
    meter = EnergyMeter().add(reader.read())
    energy.write_text("4000000\n")  # wrapped: 1 J to the top, then 4 J
    now[0] = 1.0
    reading, _ = meter.tick(reader.read(), inferences=10)
    assert reading.joules == pytest.approx(5.0)
    assert reading.watts == pytest.approx(5.0)
    assert reading.joules_per_inference == pytest.approx(0.5)


def test_no_powercap_means_none(tmp_path: Path) -> None:
    assert find_rapl(tmp_path) is None
    boards.rapl_zone(tmp_path, "intel-rapl:0", "psys")
    assert find_rapl(tmp_path) is None


def test_unreadable_counter_is_a_reason(tmp_path: Path) -> None:
    energy = boards.rapl_zone(tmp_path, "intel-rapl:0", "package-0")
    energy.unlink()
    energy.mkdir()  # reading it fails with an OSError other than "absent"
    reason = find_rapl(tmp_path)
    assert isinstance(reason, str)
    assert "RAPL package-0" in reason


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_root_only_counter_is_explained(tmp_path: Path) -> None:
    boards.rapl_zone(tmp_path, "intel-rapl:0", "package-0").chmod(0o000)
    reason = find_rapl(tmp_path)
    assert isinstance(reason, str)
    assert "root only" in reason


def test_counter_gone_after_probe_raises(tmp_path: Path) -> None:
    energy = boards.rapl_zone(tmp_path, "intel-rapl:0", "package-0")
    reader = find_rapl(tmp_path)
    assert isinstance(reader, RaplReader)
    energy.unlink()
    with pytest.raises(PowerReadError, match="energy_uj"):
        reader.read()


REAL = Path("/sys/class/powercap/intel-rapl:0/energy_uj")


def _real_rapl_unreadable() -> str | None:
    try:
        int(REAL.read_text())
    except FileNotFoundError:
        return f"no RAPL on this machine ({REAL} does not exist)"
    except OSError as exc:
        return f"{REAL} is not readable here: {exc}"
    return None


@pytest.mark.hardware
def test_real_rapl() -> None:
    """The readers find and read this machine's counters; what they read is this machine's
    business (a VM's counter may not move), so only the shape of the figures is checked."""
    if (why := _real_rapl_unreadable()) is not None:
        pytest.skip(why)
    reader = find_rapl(Path("/"))
    assert isinstance(reader, RaplReader)
    meter = EnergyMeter().add(reader.read())
    reading, _ = meter.tick(reader.read(), inferences=1)
    assert reading.seconds >= 0 and reading.inferences == 1
    assert reading.watts is None or reading.watts >= 0
    assert reading.joules is None or reading.joules >= 0
