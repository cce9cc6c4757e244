"""Prometheus metrics of one agent, in a registry of its own, served on ``/metrics``.

Names (all prefixed ``edgefleet_``): inference latency histogram, requests, errors by reason,
requests in flight, model load time, time per install phase, bytes downloaded (artifacts, and
the layers of release images pulled), and an info metric naming the active and previous
release; the release containers in use (info, restarts, CPU seconds, memory and its limit,
labelled by release); plus the standard ``process_*`` CPU and memory metrics of the agent
process.

The Predict figures (latency histogram, requests, in flight) are not prometheus_client
metrics updated per request: the servicer records into ``window`` (``sampling.Window``, a few
hundred ns, no lock) and ``_PredictCollector`` folds and reads it at scrape time. Errors, on
the error path only, stay a plain ``Counter``.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from edgefleet.agent.sampling import Window
from edgefleet.common.types import ContainerStatus

log = logging.getLogger(__name__)

SLOW_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)


class _PredictCollector(Collector):
    """The Predict families, from ``window`` as of the scrape."""

    def __init__(self, window: Window) -> None:
        self._window = window

    def collect(self) -> Iterator[Metric]:
        totals = self._window.totals()
        in_flight = len(self._window.in_flight)
        bounds = [*map(floatToGoString, self._window.bounds), "+Inf"]
        yield HistogramMetricFamily(
            "edgefleet_inference_latency_seconds",
            "Predict latency, from request decoded to response built.",
            buckets=list(zip(bounds, itertools.accumulate(totals.buckets), strict=True)),
            sum_value=totals.sum_s,
        )
        yield CounterMetricFamily(
            "edgefleet_inference_requests",
            "Predict requests served or refused.",
            value=totals.requests,
        )
        yield GaugeMetricFamily(
            "edgefleet_inference_in_flight", "Predict requests being served now.", value=in_flight
        )


class _ContainerCollector(Collector):
    """The release containers' families, as ``containerwatch`` last sampled them."""

    def __init__(self) -> None:
        self.samples: tuple[ContainerStatus, ...] = ()

    def collect(self) -> Iterator[Metric]:
        samples = self.samples  # one tuple, swapped whole by the sampler: no lock
        info = GaugeMetricFamily(
            "edgefleet_container_info",
            "A release container in use (1), with its state and image.",
            labels=["release", "container", "state", "image"],
        )
        restarts = GaugeMetricFamily(
            "edgefleet_container_restarts",
            "Times dockerd restarted the release's container.",
            labels=["release"],
        )
        cpu = GaugeMetricFamily(
            "edgefleet_container_cpu_seconds",
            "CPU time the release's container has used since it started.",
            labels=["release"],
        )
        memory = GaugeMetricFamily(
            "edgefleet_container_memory_bytes",
            "Memory the release's container uses now (inactive page cache excluded).",
            labels=["release"],
        )
        limit = GaugeMetricFamily(
            "edgefleet_container_memory_limit_bytes",
            "Memory limit of the release's container.",
            labels=["release"],
        )
        for c in samples:
            info.add_metric([c.release, c.container_id[:12], c.state, c.image], 1)
            restarts.add_metric([c.release], c.restarts)
            cpu.add_metric([c.release], c.cpu_seconds)
            memory.add_metric([c.release], c.memory_bytes)
            limit.add_metric([c.release], c.memory_limit_bytes)
        yield from (info, restarts, cpu, memory, limit)


class _OutboxCollector(Collector):
    """The outbox's families, read at scrape time: what it dropped when full, what it holds."""

    def __init__(self, dropped: Callable[[], int], pending: Callable[[], int]) -> None:
        self._dropped = dropped
        self._pending = pending

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "edgefleet_outbox_dropped",
            "Events and telemetry the full outbox dropped, oldest first (kept across restarts).",
            value=self._dropped(),
        )
        yield GaugeMetricFamily(
            "edgefleet_outbox_pending",
            "Events and telemetry waiting in the outbox for the broker.",
            value=self._pending(),
        )


class AgentMetrics:
    def __init__(self, window: Window | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # process_cpu_seconds_total, process_resident_memory_bytes, ... and the Python version
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.window = window or Window()
        r.register(_PredictCollector(self.window))
        self._containers = _ContainerCollector()
        r.register(self._containers)
        self.errors = Counter(
            "edgefleet_inference_errors",
            "Predict requests that failed, by reason.",
            ["reason"],
            registry=r,
        )
        self.model_load = Histogram(
            "edgefleet_model_load_seconds",
            "Time to load a model into the runtime.",
            buckets=SLOW_BUCKETS,
            registry=r,
        )
        self.phase_seconds = Histogram(
            "edgefleet_install_phase_seconds",
            "Time spent in each install step.",
            ["phase"],
            buckets=SLOW_BUCKETS,
            registry=r,
        )
        self.download_bytes = Counter(
            "edgefleet_download_bytes", "Artifact bytes downloaded.", registry=r
        )
        self.image_pull_bytes = Counter(
            "edgefleet_image_pull_bytes",
            "Bytes of container release images pulled (the layers this device lacked).",
            registry=r,
        )
        self.active_release = Info(
            "edgefleet_active_release",
            "The release this device serves and the execution provider it runs on.",
            registry=r,
        )
        self.active_release.info(
            {"release": "", "previous": "", "manifest_digest": "", "provider": ""}
        )
        self._http: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def set_active(
        self, *, release: str, previous: str, manifest_digest: str, provider: str = ""
    ) -> None:
        """The release served now, and the execution provider its session runs on."""
        self.active_release.info(
            {
                "release": release,
                "previous": previous,
                "manifest_digest": manifest_digest,
                "provider": provider,
            }
        )

    def watch_outbox(self, *, dropped: Callable[[], int], pending: Callable[[], int]) -> None:
        """Serve the outbox's dropped count and backlog (``edgefleet_outbox_*``)."""
        self.registry.register(_OutboxCollector(dropped, pending))

    def set_containers(self, samples: tuple[ContainerStatus, ...]) -> None:
        """The release containers in use, as just sampled (empty: none)."""
        self._containers.samples = samples

    def serve(self, *, host: str, port: int) -> int:
        """Serve ``/metrics`` on ``host:port`` (0 = any free port); return the bound port."""
        self._http, self._thread = start_http_server(port, addr=host, registry=self.registry)
        bound = int(self._http.server_port)
        log.info("metrics on http://%s:%d/metrics", host, bound)
        return bound

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._http = self._thread = None
