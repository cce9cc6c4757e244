"""Power figures for telemetry and ``/metrics``: the reader ``power.probe`` found, metered per
telemetry window.

``PowerTap.open`` probes once at start (under ``--power-root``, ``/`` on a device, a fixture
tree in tests) and logs ``describe`` once. Without a usable sensor there is no tap and the power
fields of telemetry stay absent. A sensor that fails a read later is logged once and that
window is skipped; the meter goes on from its last good sample.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from edgefleet.agent.power import (
    Clock,
    EnergyMeter,
    PowerReader,
    PowerReadError,
    PowerReading,
    PowerSample,
    describe,
    probe,
)
from edgefleet.agent.power.collector import PowerCollector

log = logging.getLogger(__name__)


class PowerTap:
    def __init__(self, reader: PowerReader, *, registry: CollectorRegistry) -> None:
        self._reader = reader
        self._gauges = PowerCollector(source=reader.name)
        registry.register(self._gauges)
        self._warned = False
        self._meter = EnergyMeter()
        first = self._read()
        if first is not None:
            self._meter = self._meter.add(first)

    @classmethod
    def open(
        cls, root: Path, *, registry: CollectorRegistry, clock: Clock = time.monotonic
    ) -> PowerTap | None:
        """The tap on this device's sensor; None (and power figures absent) without one.
        ``clock`` stamps the readings: the telemetry loop's, so energy and windows agree."""
        try:
            found = probe(root, clock=clock)
        except Exception:  # power figures are a nicety: never a reason not to start
            log.exception("power: probing the sensors under %s failed", root)
            return None
        log.info("%s", describe(found))
        return cls(found.reader, registry=registry) if found.reader is not None else None

    def tick(self, *, inferences: int) -> PowerReading | None:
        """Close the window now: its figures, or None when the sensor could not be read."""
        sample = self._read()
        if sample is None:
            return None
        reading, self._meter = self._meter.tick(sample, inferences=inferences)
        self._gauges.update(reading)
        return reading

    def _read(self) -> PowerSample | None:
        try:
            return self._reader.read()
        except PowerReadError as exc:
            if not self._warned:
                log.warning("%s; power figures are skipped while it fails", exc)
                self._warned = True
            return None
