"""Intel and AMD RAPL through the powercap interface: per-package energy counters.

Layout (the same on Intel and on AMD Zen, whose driver registers as ``intel-rapl`` too)::

    /sys/class/powercap/intel-rapl:0/name                 package-0
    /sys/class/powercap/intel-rapl:0/energy_uj            cumulative µJ, wraps
    /sys/class/powercap/intel-rapl:0/max_energy_range_uj  the value it wraps at
    /sys/class/powercap/intel-rapl:0:0/name               core   (subdomain of package 0)
    /sys/class/powercap/intel-rapl:1/name                 psys   (whole platform, some laptops)
    /sys/class/powercap/intel-rapl-mmio:0/...             the package again, through MMIO

Only top-level ``package-N`` zones are read: subdomains (core, uncore, dram) lie inside their
package, ``psys`` contains the packages, and ``intel-rapl-mmio`` repeats them, so adding any
of those would count the same joules twice. Since Linux 5.10 ``energy_uj`` is readable by root
only (CVE-2020-8694); the probe then says so instead of reporting nothing silently.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgefleet.agent.power.sample import (
    ENERGY_COUNTER,
    Clock,
    EnergyCounter,
    PowerSample,
)
from edgefleet.agent.power.sysfs import read_number, read_text, sorted_glob, under

POWERCAP = "/sys/class/powercap"
UJ = 1e-6


@dataclass(frozen=True)
class RaplDomain:
    """One package zone: its name, its ``energy_uj`` file and its wrap point in joules."""

    name: str
    energy: Path
    wraps_at: float | None


class RaplReader:
    """Reads the package energy counters; the meter turns them into watts and joules."""

    method = ENERGY_COUNTER

    def __init__(self, domains: Sequence[RaplDomain], *, clock: Clock = time.monotonic) -> None:
        if not domains:
            raise ValueError("RaplReader needs at least one package domain")
        self.domains = tuple(domains)
        self._clock = clock

    @property
    def name(self) -> str:
        return "RAPL " + "+".join(d.name for d in self.domains)

    def read(self) -> PowerSample:
        counters = tuple(
            EnergyCounter(d.name, read_number(d.energy, source=self.name) * UJ, wraps_at=d.wraps_at)
            for d in self.domains
        )
        return PowerSample(at=self._clock(), counters=counters)


def package_domains(root: Path) -> list[RaplDomain]:
    """Every top-level ``package-N`` zone under ``root``'s powercap, readable or not."""
    domains = []
    for zone in sorted_glob(under(root, POWERCAP), "intel-rapl:*"):
        if zone.name.count(":") != 1:  # intel-rapl:0:0 is a subdomain of intel-rapl:0
            continue
        name = read_text(zone / "name")
        if name is None or not name.startswith("package"):
            continue
        domains.append(RaplDomain(name, zone / "energy_uj", _wrap(zone)))
    return domains


def find_rapl(root: Path, *, clock: Clock = time.monotonic) -> RaplReader | str | None:
    """A reader over every package; a reason string when RAPL is there but unreadable."""
    domains = package_domains(root)
    if not domains:
        return None
    for d in domains:
        try:
            int(d.energy.read_text().strip())
        except PermissionError:
            return (
                f"RAPL {d.name} is there but {d.energy.name} is readable by root only "
                "(Linux >= 5.10); run the agent with read access to it to get power metrics"
            )
        except OSError as exc:
            return f"RAPL {d.name}: cannot read {d.energy.name}: {exc.strerror or exc}"
        except ValueError as exc:
            return f"RAPL {d.name}: cannot read {d.energy.name}: {exc}"
    return RaplReader(domains, clock=clock)


def _wrap(zone: Path) -> float | None:
    text = read_text(zone / "max_energy_range_uj")
    try:
        value = int(text) if text is not None else 0
    except ValueError:
        return None
    return value * UJ if value > 0 else None
