"""Power and energy readers for the agent's telemetry (DESIGN.md section 2: agent).

One ``PowerReader`` per kind of sensor, chosen once at start by ``probe``: NVIDIA Jetson's
INA3221 rails (``jetson``), Raspberry Pi 5's PMIC (``rpi``), Intel/AMD RAPL (``rapl``) and
generic ``hwmon`` sensors (``hwmon``). ``metering.EnergyMeter`` (pure) turns successive
samples into average watts and joules per inference. Where no sensor exists ``probe`` returns
no reader, the agent logs ``describe(...)`` once and power metrics stay absent: a figure is
reported only when a sensor measured it.

Wiring, in the agent's shell (``collector`` holds the prometheus_client side)::

    found = probe()                                   # once, at start
    log.info("%s", describe(found))
    if found.reader is not None:
        gauges = PowerCollector(source=found.reader.name)
        metrics.registry.register(gauges)
        meter = EnergyMeter().add(found.reader.read())
    ...                                               # each telemetry tick
    reading, meter = meter.tick(found.reader.read(), inferences=served_since_last_tick)
    gauges.update(reading)                            # and reading.watts etc. into telemetry
"""

from __future__ import annotations

from edgefleet.agent.power.hwmon import HwmonPowerReader
from edgefleet.agent.power.jetson import JetsonIna3221Reader
from edgefleet.agent.power.metering import EnergyMeter, PowerReading
from edgefleet.agent.power.probing import KINDS, ProbeResult, describe, probe
from edgefleet.agent.power.rapl import RaplReader
from edgefleet.agent.power.rpi import RaspberryPi5Reader, parse_pmic_adc
from edgefleet.agent.power.sample import (
    ENERGY_COUNTER,
    POWER_SENSOR,
    Clock,
    EnergyCounter,
    PowerReader,
    PowerReadError,
    PowerSample,
    Rail,
    Runner,
)

__all__ = [
    "ENERGY_COUNTER",
    "KINDS",
    "POWER_SENSOR",
    "Clock",
    "EnergyCounter",
    "EnergyMeter",
    "HwmonPowerReader",
    "JetsonIna3221Reader",
    "PowerReadError",
    "PowerReader",
    "PowerReading",
    "PowerSample",
    "ProbeResult",
    "Rail",
    "RaplReader",
    "RaspberryPi5Reader",
    "Runner",
    "describe",
    "parse_pmic_adc",
    "probe",
]
