"""Telemetry: what Predict did over the last window, plus the process's CPU and memory.

``Window`` (``sampling``) collects from the serving threads; a named background thread drains
it every ``interval`` seconds into a ``Telemetry`` message (through the agent's outbox: what
was measured while cut off arrives later, up to the outbox's bound). ``requests`` and
``errors`` leave out Predict calls refused for the caller's inputs, which count in
``refused`` alone: the rollout's ``--max-error-rate`` gate reads ``errors / requests``. Power
fields are filled from the device's power sensor (``powering``) and stay absent where there is
none, or where the window gave no figure (no inferences: no joules per inference).
"""

from __future__ import annotations

import logging
import os
import resource
import sys
import time
from collections.abc import Callable

from edgefleet.agent.percentiles import percentiles
from edgefleet.agent.power import PowerReading
from edgefleet.agent.powering import PowerTap
from edgefleet.agent.sampling import Window, WindowStats
from edgefleet.common.loops import StoppableLoop
from edgefleet.common.types import Telemetry

__all__ = ["TelemetryLoop", "Window", "WindowStats", "rss_bytes", "summarize"]

log = logging.getLogger(__name__)


def summarize(
    stats: WindowStats,
    *,
    device_id: str,
    release: str,
    window_s: float,
    cpu_percent: float,
    memory_bytes: int,
    at_ms: int,
    power: PowerReading | None = None,
) -> Telemetry:
    p50 = p95 = p99 = 0.0
    if stats.latencies_s:
        p50, p95, p99 = (v * 1000.0 for v in percentiles(stats.latencies_s, (50, 95, 99)))
    return Telemetry(
        device_id=device_id,
        release=release,
        window_s=window_s,
        requests=stats.requests,
        errors=stats.errors,
        refused=stats.refused,
        p50_ms=p50,
        p95_ms=p95,
        p99_ms=p99,
        cpu_percent=cpu_percent,
        memory_bytes=memory_bytes,
        at_ms=at_ms,
        power_w=power.watts if power is not None else None,
        energy_per_inference_j=power.joules_per_inference if power is not None else None,
    )


def rss_bytes() -> int:
    """Resident set size now (Linux ``/proc``); the peak RSS elsewhere."""
    try:
        with open("/proc/self/statm", "rb") as f:  # noqa: PTH123 - one tiny read
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


class TelemetryLoop:
    """Publishes one ``Telemetry`` every ``interval`` seconds on a named thread."""

    def __init__(
        self,
        window: Window,
        *,
        interval: float,
        device_id: str,
        release: Callable[[], str],
        publish: Callable[[Telemetry], None],
        power: PowerTap | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._window = window
        self._clock = clock  # window lengths; give the power readers the same one
        self._power = power
        self._interval = interval
        self._device_id = device_id
        self._release = release
        self._publish = publish
        self._last = (0.0, 0.0)  # (clock, process CPU seconds) where the window began
        self._loop = StoppableLoop(
            self._tick, name="agent-telemetry", first_wait_s=interval, join_timeout_s=5
        )

    def start(self) -> None:
        self._last = (self._clock(), time.process_time())
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()

    def _tick(self) -> float:
        """Close the window: summarize it and publish the sample."""
        last_wall, last_cpu = self._last
        wall, cpu = self._clock(), time.process_time()
        elapsed = max(wall - last_wall, 1e-9)
        stats = self._window.drain()
        power = None
        if self._power is not None:
            power = self._power.tick(inferences=stats.requests - stats.errors)
        sample = summarize(
            stats,
            device_id=self._device_id,
            release=self._release(),
            window_s=elapsed,
            cpu_percent=100.0 * (cpu - last_cpu) / elapsed,
            memory_bytes=rss_bytes(),
            at_ms=int(time.time() * 1000),
            power=power,
        )
        self._last = (wall, cpu)
        try:
            self._publish(sample)
        except Exception:
            log.exception("could not publish telemetry")
        return self._interval
