"""The power gauges on the agent's ``/metrics``, present only while there is a figure.

``edgefleet_power_watts`` and ``edgefleet_energy_per_inference_joules`` come from the last
telemetry window's ``PowerReading``. A plain ``Gauge`` would go on exporting its last value
(or 0) after a window without inferences or on a device without a sensor; this collector
yields a sample only when the reading has one, so an absent figure is absent in Prometheus
too. Register it only when ``probe`` found a reader.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from edgefleet.agent.power.metering import PowerReading

WATTS = "edgefleet_power_watts"
JOULES_PER_INFERENCE = "edgefleet_energy_per_inference_joules"


class PowerCollector(Collector):
    def __init__(self, *, source: str) -> None:
        self._source = source
        self._reading: PowerReading | None = None

    def update(self, reading: PowerReading) -> None:
        """Publish the window just closed (one reference swap: safe against a scrape)."""
        self._reading = reading

    def collect(self) -> Iterator[Metric]:
        reading = self._reading  # read once: the telemetry thread may swap it meanwhile
        if reading is None:
            return
        if reading.watts is not None:
            yield GaugeMetricFamily(
                WATTS,
                f"Average power of the device over the last telemetry window ({self._source}).",
                value=reading.watts,
            )
        if reading.joules_per_inference is not None:
            yield GaugeMetricFamily(
                JOULES_PER_INFERENCE,
                "Device energy over the last telemetry window divided by the inferences served.",
                value=reading.joules_per_inference,
            )

    def describe(self) -> Iterator[Metric]:
        # names for the registry's duplicate check, without calling collect()
        yield GaugeMetricFamily(WATTS, "")
        yield GaugeMetricFamily(JOULES_PER_INFERENCE, "")
