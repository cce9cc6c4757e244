"""The health window: watching an activated release, then keeping it or rolling it back.

Runs on the worker thread, between install steps (``Installer.step`` asks ``step`` first). At
each checkup it measures (golden or smoke outputs of the serving runtime, live Predict p95,
runtime errors since the last checkup, and the runtime's own faults: a container that
restarted, exited or vanished while no client was calling), and ``health.judge_window`` decides:

* ``Watch``: check again later (runtime failures are persisted in the window record);
* ``Passed``: the window is cleared and the phase becomes ``active``, event
  ``health_window_passed``;
* ``RollBack``: carried out by ``switching.Switch.roll_back``: the state naming the previous
  slot as active is written first (the window cleared, phase ``rolled_back``, ``last_error``
  saying why), then the previous runtime (kept loaded during the window) is swapped in, the
  failed slot pruned, and event ``rolled_back`` reported. The generation stays applied: the
  controller's retained desired state is not retried. With no previous release the device
  stops serving rather than serve a release that failed.

A restart inside a window never comes here: ``restoring`` rolls back at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from edgefleet.agent import checking, failpoints, health
from edgefleet.agent.goldenset import GoldenSet
from edgefleet.agent.ledger import Ledger
from edgefleet.agent.live import LiveStats
from edgefleet.agent.percentiles import percentiles
from edgefleet.agent.reporting import Reporter
from edgefleet.agent.runtime import ModelRuntime
from edgefleet.agent.state import HealthWindow
from edgefleet.agent.switching import Switch
from edgefleet.common.types import HealthPolicy, InstallPhase

log = logging.getLogger(__name__)


class HealthWatch:
    def __init__(
        self,
        *,
        ledger: Ledger,
        switch: Switch,
        reporter: Reporter,
        live: LiveStats,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ledger = ledger
        self._switch = switch
        self._reporter = reporter
        self._live = live
        self._clock = clock
        self._candidate: ModelRuntime | None = None
        self._previous: ModelRuntime | None = None
        self._golden: GoldenSet | None = None
        self._policy = HealthPolicy()
        self._started = self._next = 0.0

    @property
    def previous_runtime(self) -> ModelRuntime | None:
        """The runtime a failure of the watched release goes back to (None when none)."""
        return self._previous

    def begin(
        self,
        *,
        candidate: ModelRuntime,
        previous: ModelRuntime | None,
        golden: GoldenSet | None,
        policy: HealthPolicy,
    ) -> None:
        """Watch ``candidate``, just activated with a window in the state (saved already)."""
        window = self._ledger.state.window
        assert window is not None and window.slot == candidate.model.slot
        self._candidate, self._previous, self._golden = candidate, previous, golden
        self._policy = policy
        self._live.watch(candidate.release)
        self._started = self._clock()
        self._next = self._started + health.check_interval(window.duration_s)
        log.info("watching %s for %gs", window.release, window.duration_s)

    def end(self) -> None:
        self._candidate = self._previous = None
        self._golden = None
        self._live.stop()

    def step(self) -> float | None:
        """Run a checkup when one is due; the seconds until the next (None: no window)."""
        window = self._ledger.state.window
        if window is None:
            if self._candidate is not None:
                self.end()
            return None
        candidate = self._candidate
        if candidate is None or candidate.model.slot != window.slot:
            self._roll_back(window, f"{window.release} has no runtime left to watch")
            return None
        now = self._clock()
        if now < self._next:
            return self._next - now
        verdict = self._checkup(window, candidate, now)
        if isinstance(verdict, health.Watch):
            self._next = now + verdict.after_s
            return verdict.after_s
        if isinstance(verdict, health.Passed):
            self._pass(window)
        else:
            self._roll_back(window, verdict.reason)
        return None

    # measuring

    def _checkup(self, window: HealthWindow, candidate: ModelRuntime, now: float) -> health.Verdict:
        failpoints.hit("window_checkup")
        sample = self._live.take()
        # what the runtime's own watch saw, with no client calling (a container's restarts)
        faults = candidate.faults()
        if sample.runtime_errors or faults.count:
            window = replace(
                window,
                runtime_failures=window.runtime_failures + sample.runtime_errors + faults.count,
                last_failure=faults.last if faults.count else sample.last_error,
            )
            self._ledger.save(replace(self._ledger.state, window=window))
        live = None
        if sample.latencies_s:
            median, p95 = percentiles(np.asarray(sample.latencies_s) * 1000.0, (50, 95))
            live = health.Latency(len(sample.latencies_s), median, p95)
        checkup = health.Checkup(
            elapsed_s=now - self._started,
            output_problems=tuple(checking.output_problems(candidate, self._golden, self._policy)),
            live=live,
            runtime_failures=window.runtime_failures,
            last_failure=window.last_failure,
            stopped=faults.last if faults.final else "",
        )
        return health.judge_window(self._policy, checkup, duration_s=window.duration_s)

    # carrying out

    def _pass(self, window: HealthWindow) -> None:
        state = self._ledger.state
        phase = InstallPhase.ACTIVE if state.phase is InstallPhase.HEALTH_CHECK else state.phase
        self._reporter.event(
            "health_window_passed",
            f"{window.release} was healthy for its {window.duration_s:g}s health window",
            release=window.release,
            generation=window.generation,
            phase=InstallPhase.ACTIVE,
        )
        self._ledger.commit(replace(state, window=None, phase=phase))
        self.end()

    def _roll_back(self, window: HealthWindow, why: str) -> None:
        self._switch.roll_back(window, why, failed=self._candidate, previous=self._previous)
        self.end()
        self._switch.finish()
