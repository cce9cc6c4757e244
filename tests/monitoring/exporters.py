"""Stand-ins for a controller and an agent: every catalogue metric, with plausible values.

They let the live checks run without the real processes, so a dashboard query that cannot
return data for well-formed series (a wrong label, a join that never matches) fails here
already. Families are built from ``catalogue``, so the two cannot drift apart.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

from tests.monitoring import catalogue
from tests.monitoring.catalogue import Metric

DEVICES = (
    {"device": "d1", "fleet": "f1", "release": "r1"},
    {"device": "d2", "fleet": "f1", "release": "r2"},
    {"device": "d3", "fleet": "f2", "release": "r1"},
)
AGENT_LABELS = {"device": "d1", "fleet": "f1"}
"""Target labels of the fake agent, as targets/agents.json gives them."""
LABEL_VALUES = {
    "reason": "invalid_input",
    "phase": "fetching",
    "rollout": "ro1",
    "fleet": "f1",
    "release": "r2",
    "channel": "telemetry",
    "container": "0123456789ab",
    "state": "running",
    "image": "sha256:00",
}


def _family(metric: Metric, registry: CollectorRegistry) -> object:
    base = metric.name.removesuffix("_total")
    if metric.kind == "info":  # a gauge may end in _info too (edgefleet_container_info)
        base = base.removesuffix("_info")
    labels = [] if metric.kind == "info" else list(metric.labels)
    kind = {"gauge": Gauge, "counter": Counter, "histogram": Histogram, "info": Info}
    return kind[metric.kind](base, f"stand-in for {metric.name}", labels, registry=registry)


def controller_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    for metric in catalogue.CONTROLLER:
        family = _family(metric, registry)
        if metric.labels == catalogue.DEVICE:
            assert isinstance(family, Gauge)
            for n, device in enumerate(DEVICES, start=1):
                online = metric.name == "edgefleet_device_online"
                family.labels(**device).set((1 if n < 3 else 0) if online else 0.01 * n)
        elif isinstance(family, Counter):
            family.labels(*(LABEL_VALUES[label] for label in metric.labels)).inc()
        else:  # rollout phase: the canary is current, pending was
            assert isinstance(family, Gauge)
            family.labels(rollout="ro1", fleet="f1", release="r2", phase="canary").set(1)
            family.labels(rollout="ro1", fleet="f1", release="r2", phase="pending").set(0)
    return registry


def agent_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    for metric in catalogue.AGENT:
        family = _family(metric, registry)
        values = [] if metric.kind == "info" else [LABEL_VALUES[k] for k in metric.labels]
        if isinstance(family, Info):
            family.info({"release": "r1", "previous": "r0", "manifest_digest": "sha256:00"})
        elif isinstance(family, Histogram):
            for seconds in (0.002, 0.004, 0.03):
                (family.labels(*values) if values else family).observe(seconds)
        elif isinstance(family, Counter):
            (family.labels(*values) if values else family).inc(3)
        else:
            assert isinstance(family, Gauge)
            (family.labels(*values) if values else family).set(2.5)
    return registry


@contextmanager
def serving(registry: CollectorRegistry) -> Iterator[str]:
    """Serve ``registry`` on a free loopback port; yields ``host:port``."""
    server: WSGIServer
    thread: threading.Thread
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield f"127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
