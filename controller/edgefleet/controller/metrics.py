"""Prometheus metrics of the controller, in a registry of its own (several controllers can live
in one test process), optionally served on ``/metrics``.

Device counts are read from the database at scrape time, so they are right after a restart
and never drift from what ListDevices shows.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

FleetCounts = Callable[[], list[tuple[str, bool, int]]]


class _DeviceCollector(Collector):
    def __init__(self, counts: FleetCounts) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "edgefleet_controller_devices",
            "Registered devices by fleet and presence",
            labels=["fleet", "online"],
        )
        try:
            rows = self._counts()
        except Exception:  # a scrape must not fail because the database is busy
            log.exception("could not count devices for /metrics")
            rows = []
        for fleet, online, n in rows:
            gauge.add_metric([fleet, "true" if online else "false"], n)
        yield gauge


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.messages = Counter(
            "edgefleet_controller_messages_total",
            "Device messages received over MQTT, by channel",
            ["channel"],
            registry=self.registry,
        )
        self.malformed = Counter(
            "edgefleet_controller_malformed_messages_total",
            "Device messages dropped because they did not decode or did not match their topic",
            ["channel"],
            registry=self.registry,
        )
        self.dropped = Counter(
            "edgefleet_controller_dropped_messages_total",
            "Device messages dropped because the ingest queue was full",
            ["channel"],
            registry=self.registry,
        )
        self.refused = Counter(
            "edgefleet_controller_refused_reports_total",
            "Device reports that changed nothing because the registry says otherwise: "
            "revoked, not_enrolled (with --enrolled-only), wrong_fleet",
            ["reason"],
            registry=self.registry,
        )
        self.deploys = Counter(
            "edgefleet_controller_deploys_total",
            "Deploy requests, by result",
            ["result"],
            registry=self.registry,
        )
        self.corrupt_blobs = Counter(
            "edgefleet_controller_corrupt_blobs_total",
            "Blobs found corrupt in the controller's store when asked for; moved aside, not served",
            registry=self.registry,
        )
        self.artifact_bytes = Counter(
            "edgefleet_controller_artifact_bytes_served_total",
            "Blob bytes the controller's ArtifactService sent to devices (its download egress; "
            "bytes devices fetch from peers are not counted here)",
            registry=self.registry,
        )
        self.desired_published = Counter(
            "edgefleet_controller_desired_states_published_total",
            "Signed desired states handed to the MQTT session",
            registry=self.registry,
        )
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def watch_devices(self, counts: FleetCounts) -> None:
        self.registry.register(_DeviceCollector(counts))

    def watch(self, collector: Collector) -> None:
        """Add a collector that reads its figures at scrape time (``devices.metrics``)."""
        self.registry.register(collector)

    def serve(self, *, host: str, port: int) -> int:
        """Serve ``/metrics``; returns the bound port."""
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        bound = int(self._server.server_port)
        log.info("metrics on http://%s:%d/metrics", host, bound)
        return bound

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None
