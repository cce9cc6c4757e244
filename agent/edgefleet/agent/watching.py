"""The health window: watching an activated release, then keeping it or rolling it back.

Runs on the worker thread, between install steps (``Installer.step`` asks ``step`` first). At
each checkup it measures (golden or smoke outputs of the serving runtime, live Predict p95,
runtime errors since the last checkup, and the runtime's own faults: a container that
restarted, exited or vanished while no client was calling), and ``health.judge_window`` decides:

* ``Watch``: check again later (runtime failures are persisted in the window record);
* ``Passed``: the window is cleared and the phase becomes ``active``, event
  ``health_window_passed``;
* ``Failed``: the state naming the previous slot as active is written first (the window
  cleared, phase ``rolled_back``, ``last_error`` saying why), then the previous runtime (kept
  loaded during the window) is swapped in, the failed slot pruned, and event ``rolled_back``
  reported. The generation stays applied: the controller's retained desired state is not
  retried. With no previous release the device stops serving rather than serve a release
  that failed.

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
from edgefleet.agent.metrics import AgentMetrics
from edgefleet.agent.reporting import Reporter
from edgefleet.agent.restoring import load_slot
from edgefleet.agent.runtime import ModelRuntime
from edgefleet.agent.state import DeviceState, HealthWindow
from edgefleet.agent.store import SlotStore
from edgefleet.common.errors import EdgeFleetError
from edgefleet.common.signing import TrustStore
from edgefleet.common.types import HealthPolicy, InstallPhase

log = logging.getLogger(__name__)


class HealthWatch:
    def __init__(
        self,
        *,
        ledger: Ledger,
        store: SlotStore,
        trust: TrustStore,
        reporter: Reporter,
        metrics: AgentMetrics,
        live: LiveStats,
        serve: Callable[[ModelRuntime, DeviceState], None],
        unserve: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ledger = ledger
        self._store = store
        self._trust = trust
        self._reporter = reporter
        self._metrics = metrics
        self._live = live
        self._serve = serve
        self._unserve = unserve
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
            median, p95 = np.percentile(np.asarray(sample.latencies_s) * 1000.0, [50, 95])
            live = health.Latency(len(sample.latencies_s), float(median), float(p95))
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
        state = self._ledger.state
        target, runtime = state.previous, self._previous
        if target is not None and (runtime is None or runtime.model.slot != target.slot):
            try:
                runtime = load_slot(self._store, self._trust, target, metrics=self._metrics)
            except EdgeFleetError as exc:
                why += f"; the previous release {target.release} cannot be loaded either: {exc}"
                state, target, runtime = replace(state, previous=None), None, None
            else:
                if runtime.fallback:
                    self._reporter.event(
                        "provider_fallback", runtime.fallback, release=target.release
                    )
        back_on = target.release if target is not None else "no model"
        reason = f"{window.release} failed its health window, back on {back_on}: {why}"
        new = state.rolled_back(reason)
        log.warning("rolled back: %s", reason)
        # a container's last words go in the event only, not in last_error (a table cell)
        lines = self._candidate.last_lines() if self._candidate is not None else ""
        self._reporter.event(
            "rolled_back",
            f"{reason}; its last log lines: {lines}" if lines else reason,
            release=new.active.release if new.active else "",
            generation=window.generation,
            phase=InstallPhase.ROLLED_BACK,
        )
        self._ledger.save(new)  # on disk first: a crash from here on restarts on the old slot
        failpoints.hit("after_rollback_state")
        if runtime is not None and new.active is not None:
            self._serve(runtime, new)
        else:
            self._unserve()
        self.end()
        self._ledger.prune()
        self._ledger.report()
