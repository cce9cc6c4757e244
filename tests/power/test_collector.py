"""The power gauges appear on /metrics only while the last window has a figure."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from edgefleet.agent.power import EnergyMeter, PowerSample
from edgefleet.agent.power.collector import PowerCollector


def exposition(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


def test_absent_until_measured_then_each_figure_when_known() -> None:
    registry = CollectorRegistry()
    collector = PowerCollector(source="test sensor")
    registry.register(collector)
    assert "edgefleet_" not in exposition(registry)

    first, meter = EnergyMeter().tick(PowerSample(at=0.0, watts=4.0), inferences=0)
    collector.update(first)
    text = exposition(registry)
    assert "edgefleet_power_watts 4.0" in text
    assert "edgefleet_energy_per_inference_joules" not in text

    second, meter = meter.tick(PowerSample(at=10.0, watts=6.0), inferences=25)
    collector.update(second)
    text = exposition(registry)
    assert "edgefleet_power_watts 5.0" in text
    assert "edgefleet_energy_per_inference_joules 2.0" in text

    idle, _ = meter.tick(PowerSample(at=20.0, watts=6.0), inferences=0)
    collector.update(idle)
    assert "edgefleet_energy_per_inference_joules" not in exposition(registry)


def test_names_are_claimed_at_registration() -> None:
    registry = CollectorRegistry()
    registry.register(PowerCollector(source="a"))
    with pytest.raises(ValueError, match="edgefleet_power_watts"):
        registry.register(PowerCollector(source="b"))
