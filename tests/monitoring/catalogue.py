"""The metric names the agent and the controller expose: the only names monitoring may use.

Dashboards and rules are checked against this list (so a typo fails a test), and the fake
exporters of ``exporters`` serve exactly these series. When the agent or the controller adds a
metric, add it here first.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    """One metric family as exposed; ``name`` is the series name (``_total``, ``_info``)."""

    name: str
    kind: str  # gauge, counter, histogram, info
    labels: tuple[str, ...] = ()

    def series(self) -> tuple[str, ...]:
        """The series names Prometheus stores for this family."""
        if self.kind == "histogram":
            return tuple(f"{self.name}{s}" for s in ("_bucket", "_sum", "_count"))
        return (self.name,)


DEVICE = ("device", "fleet", "release")

AGENT = (
    Metric("edgefleet_inference_latency_seconds", "histogram"),
    Metric("edgefleet_inference_requests_total", "counter"),
    Metric("edgefleet_inference_errors_total", "counter", ("reason",)),
    Metric("edgefleet_inference_in_flight", "gauge"),
    Metric("edgefleet_model_load_seconds", "histogram"),
    Metric("edgefleet_install_phase_seconds", "histogram", ("phase",)),
    Metric("edgefleet_download_bytes_total", "counter"),
    Metric(
        "edgefleet_active_release_info",
        "info",
        ("release", "previous", "manifest_digest", "provider"),
    ),
    Metric("edgefleet_power_watts", "gauge"),
    Metric("edgefleet_energy_per_inference_joules", "gauge"),
    Metric("edgefleet_image_pull_bytes_total", "counter"),
    Metric("edgefleet_container_info", "gauge", ("release", "container", "state", "image")),
    Metric("edgefleet_container_restarts", "gauge", ("release",)),
    Metric("edgefleet_container_cpu_seconds", "gauge", ("release",)),
    Metric("edgefleet_container_memory_bytes", "gauge", ("release",)),
    Metric("edgefleet_container_memory_limit_bytes", "gauge", ("release",)),
)

CONTROLLER = (
    Metric("edgefleet_device_latency_p50_seconds", "gauge", DEVICE),
    Metric("edgefleet_device_latency_p95_seconds", "gauge", DEVICE),
    Metric("edgefleet_device_requests_per_second", "gauge", DEVICE),
    Metric("edgefleet_device_errors_per_second", "gauge", DEVICE),
    Metric("edgefleet_device_power_watts", "gauge", DEVICE),
    Metric("edgefleet_device_energy_per_inference_joules", "gauge", DEVICE),
    Metric("edgefleet_device_online", "gauge", DEVICE),
    Metric("edgefleet_rollout_phase", "gauge", ("rollout", "fleet", "release", "phase")),
    Metric("edgefleet_rollouts_aborted_total", "counter", ("fleet",)),
    Metric("edgefleet_controller_malformed_messages_total", "counter", ("channel",)),
)

CONTAINERS = frozenset(m.name for m in AGENT if m.name.startswith("edgefleet_container_"))
"""Absent by design on devices that serve no container release."""

BUILTIN = frozenset({"up", "ALERTS", "ALERTS_FOR_STATE"})
"""Series Prometheus makes itself: scrape health and alert state."""

POWER = frozenset(
    {
        "edgefleet_power_watts",
        "edgefleet_energy_per_inference_joules",
        "edgefleet_device_power_watts",
        "edgefleet_device_energy_per_inference_joules",
    }
)
"""Absent by design on devices without a power sensor."""


def known_series() -> frozenset[str]:
    return frozenset(s for m in AGENT + CONTROLLER for s in m.series()) | BUILTIN
