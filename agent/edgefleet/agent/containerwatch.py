"""Watching release containers: state, image, restarts, CPU and memory, for status and /metrics.

A named thread (``agent-containers``) samples, every ``interval`` seconds, the containers of the
runtimes in use (the one serving, the previous one during a health window, a checked
candidate) through ``Containers.sample`` (an inspect and a one-shot stats call to dockerd, a few
ms each). The figures go to ``/metrics`` at once (``AgentMetrics.set_containers``, labelled by
release) and, for the serving container only, into the device status
(``Reporter.set_container``). A status goes out at once when the serving container's identity
changes (another container or release, its state, image or restart count); otherwise its CPU
and memory figures are refreshed at most every ``refresh_s``, so an idle container does not send
a retained status per telemetry window.

Nothing here decides a rollback: a container that dies fails the Predict calls forwarded to it,
and the health window asks the container itself at each checkup (``ContainerRuntime.faults``:
restarts, an exit), so a crash counts even when no client calls.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from edgefleet.agent.containers import ContainerRuntime, Containers
from edgefleet.agent.metrics import AgentMetrics
from edgefleet.agent.reporting import Reporter
from edgefleet.agent.runtime import ModelRuntime
from edgefleet.common import types as t
from edgefleet.common.loops import StoppableLoop

log = logging.getLogger(__name__)

REFRESH_S = 60.0


def identity(c: t.ContainerStatus | None) -> tuple[str, ...] | None:
    """What makes a status worth sending at once when it changes (figures aside)."""
    if c is None:
        return None
    return (c.release, c.container_id, c.state, c.image, str(c.restarts))


class ContainerWatch:
    def __init__(
        self,
        containers: Containers,
        *,
        in_use: Callable[[], Sequence[ModelRuntime | None]],
        reporter: Reporter,
        metrics: AgentMetrics,
        interval: float,
        refresh_s: float = REFRESH_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``in_use()`` names the runtimes in use, the serving one first."""
        self._containers = containers
        self._in_use = in_use
        self._reporter = reporter
        self._metrics = metrics
        self._interval = interval
        self._refresh_s = refresh_s
        self._clock = clock
        self._sent: tuple[str, ...] | None = None
        self._sent_at = 0.0
        self._loop = StoppableLoop(self._tick, name="agent-containers")

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()

    def sample_once(self) -> None:
        """Sample the containers in use; publish the serving one's status when due."""
        runtimes = list(self._in_use())
        serving = runtimes[0] if runtimes else None
        seen: dict[str, t.ContainerStatus] = {}
        for r in runtimes:
            if isinstance(r, ContainerRuntime) and r.container_id not in seen:
                seen[r.container_id] = self._containers.sample(r.container_id, release=r.release)
        self._metrics.set_containers(tuple(seen.values()))
        current = seen.get(serving.container_id) if isinstance(serving, ContainerRuntime) else None
        now = self._clock()
        changed = identity(current) != self._sent
        due = current is not None and now - self._sent_at >= self._refresh_s
        if changed or due:
            self._sent, self._sent_at = identity(current), now
        self._reporter.set_container(current, publish=changed or due)

    def _tick(self) -> float:
        try:
            self.sample_once()
        except Exception:  # dockerd away for a moment: the next tick samples again
            log.warning("cannot sample the release containers", exc_info=True)
        return self._interval
