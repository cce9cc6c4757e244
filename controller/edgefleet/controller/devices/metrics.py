"""Fleet-level metrics on the controller's registry, read from the database at scrape time: one
Prometheus scrape of the controller covers every device and every rollout, right after a
restart too.

Device figures come from each device's latest telemetry window: rates are its own counts over
its own ``window_s``, never derived from timestamps (a device's clock may be far off). A window
the controller received long ago (by its own clock) is not exported, so a device that went
quiet does not report its last throughput forever; ``edgefleet_device_online`` still lists it.
Per-device series are bounded (``DEVICE_SERIES`` devices).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from edgefleet.controller.devices.rows import DeviceView
from edgefleet.controller.rollouts.engine import RolloutPhase

log = logging.getLogger(__name__)

T = TypeVar("T")
STALE_WINDOWS = 3  # a window is exported until this many windows have passed ...
STALE_MIN_S = 60.0  # ... and at least this long
_DEVICE_LABELS = ["device", "fleet", "release"]
DEVICE_SERIES = 1000
"""Per-device series for at most this many devices (the first by fleet and id): a scrape of a
10,000-device fleet stays small and fast; per-fleet figures (``edgefleet_controller_devices``)
cover every device."""


def _gauge(name: str, doc: str, labels: list[str] = _DEVICE_LABELS) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


def device_families(devices: Sequence[DeviceView], *, now_ms: int) -> list[Metric]:
    online = _gauge("edgefleet_device_online", "1 while the device's presence says online")
    p50 = _gauge("edgefleet_device_latency_p50_seconds", "Median Predict latency, latest window")
    p95 = _gauge("edgefleet_device_latency_p95_seconds", "p95 Predict latency, latest window")
    rps = _gauge("edgefleet_device_requests_per_second", "Predict requests/s, latest window")
    eps = _gauge("edgefleet_device_errors_per_second", "Failed Predict requests/s, latest window")
    power = _gauge("edgefleet_device_power_watts", "Mean power draw, latest window")
    energy = _gauge(
        "edgefleet_device_energy_per_inference_joules", "Energy per inference, latest window"
    )
    for d in devices:
        online.add_metric([d.device_id, d.fleet, d.active_release], 1.0 if d.online else 0.0)
        x = d.telemetry
        if x is None or x.window_s <= 0:
            continue
        if now_ms - d.telemetry_received_ms > max(STALE_WINDOWS * x.window_s, STALE_MIN_S) * 1000:
            continue
        key = [d.device_id, d.fleet, x.release]
        p50.add_metric(key, x.p50_ms / 1000)
        p95.add_metric(key, x.p95_ms / 1000)
        rps.add_metric(key, x.requests / x.window_s)
        eps.add_metric(key, x.errors / x.window_s)
        if x.power_w is not None:
            power.add_metric(key, x.power_w)
        if x.energy_per_inference_j is not None:
            energy.add_metric(key, x.energy_per_inference_j)
    return [online, p50, p95, rps, eps, power, energy]


def rollout_families(
    phases: Sequence[tuple[str, str, str, str]], aborted: Sequence[tuple[str, int]]
) -> list[Metric]:
    gauge = _gauge(
        "edgefleet_rollout_phase",
        "1 for the phase a rollout is in (unfinished rollouts and each fleet's newest)",
        ["rollout", "fleet", "release", "phase"],
    )
    for rollout, fleet, release, current in phases:
        for phase in RolloutPhase:
            gauge.add_metric([rollout, fleet, release, phase.value], float(phase == current))
    counter = CounterMetricFamily(
        "edgefleet_rollouts_aborted_total",
        "Rollouts aborted (by a gate, the operator or a fleet rollback)",
        labels=["fleet"],
    )
    for fleet, n in aborted:
        counter.add_metric([fleet], n)
    return [gauge, counter]


class FleetCollector(Collector):
    def __init__(
        self,
        *,
        devices: Callable[[], list[DeviceView]],
        phases: Callable[[], list[tuple[str, str, str, str]]],
        aborted: Callable[[], list[tuple[str, int]]],
        clock_ms: Callable[[], int],
    ) -> None:
        self._devices = devices
        self._phases = phases
        self._aborted = aborted
        self._clock_ms = clock_ms

    def describe(self) -> Iterator[Metric]:
        """The families without samples: registering must not query the database."""
        yield from device_families([], now_ms=0)
        yield from rollout_families([], [])

    def collect(self) -> Iterator[Metric]:
        yield from device_families(_read(self._devices), now_ms=self._clock_ms())
        yield from rollout_families(_read(self._phases), _read(self._aborted))


def _read(query: Callable[[], list[T]]) -> list[T]:
    try:
        return query()
    except Exception:  # a scrape must not fail because the database is busy
        log.exception("could not read the fleet for /metrics")
        return []
