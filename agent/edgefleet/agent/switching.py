"""Switching the active model: the one place "never lose the last good model" lives.

Every change of which slot serves goes through here, in one order: the state naming the slot
that should serve is written first (``state.json``, through the ``Ledger``), then the runtime
is swapped, so a crash between the two restarts on the slot the state names.

* ``Switch.activate``: a staged release that passed its health check becomes active; the
  active one (or, while a window is open, the one before the unproven release) stays the
  fall-back, kept loaded when the new release is watched (failpoints ``before_activate``,
  ``after_activate_state``, ``after_switch``).
* ``Switch.roll_back``: a release failed its health window (``health.RollBack``): back on the
  previous slot, or on no model when there is none or it no longer loads
  (``after_rollback_state``).
* ``fall_back``: at start, the active slot must not (``health.RollBack``) or cannot be served:
  the previous slot is loaded instead; the caller (``restoring``) saves the state it returns.

Slots are verified and loaded here too (``verify_slot``, ``load_verified``, ``load_slot``):
the signed manifest re-verified, then the model's and golden data's sha256.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from edgefleet.agent import failpoints
from edgefleet.agent import reconcile as r
from edgefleet.agent.ledger import Ledger
from edgefleet.agent.metrics import AgentMetrics
from edgefleet.agent.reporting import Reporter
from edgefleet.agent.runtime import LoadedModel, ModelRuntime
from edgefleet.agent.state import DeviceState, HealthWindow, PendingInstall, SlotInfo
from edgefleet.agent.store import SlotStore
from edgefleet.common.errors import EdgeFleetError, IntegrityError
from edgefleet.common.signing import TrustStore
from edgefleet.common.types import InstallPhase

log = logging.getLogger(__name__)


# --- slots: verified and loaded ---------------------------------------------------------------


def verify_slot(store: SlotStore, trust: TrustStore, slot: SlotInfo) -> LoadedModel:
    """Verify a slot end to end; raises a ``PermanentError`` naming the problem."""
    manifest, manifest_digest = store.open_slot(slot.slot, trust)
    if manifest_digest != slot.manifest_digest:
        raise IntegrityError(slot.manifest_digest, manifest_digest)
    return LoadedModel(
        release=str(manifest.ref),
        slot=slot.slot,
        manifest=manifest,
        manifest_digest=manifest_digest,
    )


def load_verified(store: SlotStore, model: LoadedModel, *, metrics: AgentMetrics) -> ModelRuntime:
    """Load a slot already verified (``verify_slot``, or staged from verified blobs)."""
    runtime = ModelRuntime.load(store.model_path(model.slot), model)
    metrics.model_load.observe(runtime.load_seconds)
    return runtime


def load_slot(
    store: SlotStore, trust: TrustStore, slot: SlotInfo, *, metrics: AgentMetrics
) -> ModelRuntime:
    """Verify a slot end to end and load it; raises a ``PermanentError`` naming the problem."""
    return load_verified(store, verify_slot(store, trust, slot), metrics=metrics)


# --- the switch -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Activated:
    """What ``Switch.activate`` did: the window opened (None: none) and the fall-back runtime."""

    window: HealthWindow | None
    previous_runtime: ModelRuntime | None


class Switch:
    def __init__(
        self,
        *,
        ledger: Ledger,
        store: SlotStore,
        trust: TrustStore,
        reporter: Reporter,
        metrics: AgentMetrics,
        serve: Callable[[ModelRuntime, DeviceState], None],
        unserve: Callable[[], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``clock``: the wall clock (seconds), for the start of a health window."""
        self._ledger = ledger
        self._store = store
        self._trust = trust
        self._reporter = reporter
        self._metrics = metrics
        self._serve = serve
        self._unserve = unserve
        self._clock = clock

    def activate(
        self,
        action: r.Activate,
        install: PendingInstall,
        runtime: ModelRuntime,
        *,
        serving: ModelRuntime | None,
        watched_previous: ModelRuntime | None,
    ) -> Activated:
        """Make ``runtime`` (the checked slot of ``install``) the active model.

        ``serving``: the runtime serving now; ``watched_previous``: the fall-back of the
        release in its window, if one is open.
        """
        assert runtime.model.slot == action.slot
        failpoints.hit("before_activate")
        s = self._ledger.state
        # A release still in its window never passed: the one before it stays the fall-back.
        if s.window is not None:
            previous, previous_runtime = s.previous, watched_previous
        else:
            previous, previous_runtime = s.active, serving
        window = None
        if action.window_s > 0:
            window = HealthWindow(
                generation=action.generation,
                release=action.release,
                slot=action.slot,
                previous_slot=previous.slot if previous else "",
                started_at_ms=int(self._clock() * 1000),
                duration_s=action.window_s,
            )
        new = replace(
            s,
            generation_applied=action.generation,
            phase=InstallPhase.HEALTH_CHECK if window else InstallPhase.ACTIVE,
            last_error="",
            active=SlotInfo(
                action.slot,
                install.release,
                install.manifest_digest,
                install.model_digest,
                install.golden_digest,
            ),
            previous=previous,
            install=None,
            window=window,
            load_failures=0,
            load_error="",
        )
        before = previous.release if previous else "none"
        watching = f"; watching it for {action.window_s:g}s" if window else ""
        # The event goes to the outbox before the state it reports (DESIGN: at least once).
        self._reporter.event(
            "activated",
            f"{action.release} is active (previous: {before}){watching}",
            release=action.release,
            generation=action.generation,
            phase=new.phase,
        )
        self._ledger.save(new)
        failpoints.hit("after_activate_state")
        self._serve(runtime, new)
        failpoints.hit("after_switch")
        return Activated(window, previous_runtime)

    def finish(self) -> None:
        """After a switch: drop the slots the state no longer names, then report it."""
        self._ledger.prune()
        self._ledger.report()

    def roll_back(
        self,
        window: HealthWindow,
        why: str,
        *,
        failed: ModelRuntime | None,
        previous: ModelRuntime | None,
    ) -> None:
        """The release of ``window`` failed it (``why``): serve the previous slot again.

        ``failed``: its runtime, if any (a container's last log lines go in the event);
        ``previous``: the fall-back kept loaded during the window (loaded here when not).
        """
        state = self._ledger.state
        target, runtime = state.previous, previous
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
        lines = failed.last_lines() if failed is not None else ""
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


# --- at start ---------------------------------------------------------------------------------


def fall_back(
    state: DeviceState,
    problem: str,
    *,
    store: SlotStore,
    trust: TrustStore,
    metrics: AgentMetrics,
    reporter: Reporter,
) -> tuple[ModelRuntime | None, DeviceState]:
    """At start: serve the previous slot instead of the active one (``problem`` says why).

    Returns the runtime to serve (None: none) and the state to save before serving it.
    """
    slot = state.previous
    problems = [problem]
    if slot is not None:
        try:
            runtime = load_slot(store, trust, slot, metrics=metrics)
        except EdgeFleetError as exc:
            log.error("cannot restore the previous slot %s (%s): %s", slot.slot, slot.release, exc)
            problems.append(f"previous {slot.release} (slot {slot.slot}): {exc}")
        else:
            reason = f"fell back to {slot.release}: {problem}"
            reporter.event(
                "rolled_back",
                reason,
                release=slot.release,
                generation=state.window.generation if state.window else 0,
                phase=InstallPhase.ROLLED_BACK,
            )
            return runtime, state.rolled_back(reason)
    if state.window is not None and slot is None:  # there was nothing before it
        reason = f"rolled back to no model: {problem}"
        reporter.event(
            "rolled_back",
            reason,
            generation=state.window.generation,
            phase=InstallPhase.ROLLED_BACK,
        )
        return None, state.rolled_back(reason)
    reason = "no verifiable model left: " + "; ".join(problems)
    reporter.event("model_lost", reason, phase=InstallPhase.FAILED)
    return None, replace(
        state.rolled_back(reason), active=None, phase=InstallPhase.FAILED, last_error=reason
    )
