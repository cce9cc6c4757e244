"""The record of an install: each turn it takes, reported and persisted, in that order.

``InstallJournal`` holds every change ``installing`` makes to the device state outside the
switch itself: an install begun, a phase entered, an attempt that will be retried, an install
failed, a generation already active, a desired state rejected. Each reports its event first
(the outbox, at least once), then commits the state through the ``Ledger`` (atomic write,
then the status report), as ``reconcile`` documents. Activation, rollback and fall-back are
``switching``'s, not here.
"""

from __future__ import annotations

from dataclasses import replace

from edgefleet.agent import reconcile as r
from edgefleet.agent.ledger import Ledger
from edgefleet.agent.reporting import Reporter
from edgefleet.agent.state import DeviceState, PendingInstall
from edgefleet.common.types import DesiredState, InstallPhase

# The event reported when an install enters a phase.
PHASE_EVENTS = {
    InstallPhase.FETCHING: "fetch_started",
    InstallPhase.VERIFYING: "fetched",
    InstallPhase.STAGED: "staged",
    InstallPhase.HEALTH_CHECK: "health_check_started",
}


class InstallJournal:
    def __init__(self, *, ledger: Ledger, reporter: Reporter) -> None:
        self._ledger = ledger
        self._reporter = reporter

    @property
    def state(self) -> DeviceState:
        return self._ledger.state

    def resume(self, state: DeviceState) -> None:
        """Take over the state ``restoring`` produced at start-up (dropping slots it left)."""
        self._ledger.state = state
        self._ledger.prune()
        self._ledger.report()

    def rejected(self, reason: str, *, release: str = "", generation: int = 0) -> None:
        """A desired state this device will not install (nothing of the state changes)."""
        self._reporter.event("desired_rejected", reason, release=release, generation=generation)

    def begun(self, action: r.Begin, desired: DesiredState, raw: bytes) -> None:
        """A new install of ``desired`` (``raw``: its signed payload, kept to resume it)."""
        install = PendingInstall(
            generation=action.generation,
            release=action.release,
            slot=action.slot,
            phase=InstallPhase.FETCHING,
            manifest_digest=desired.manifest_digest,
            model_digest=desired.manifest.model_digest,
            golden_digest=desired.manifest.golden_digest,
            desired=raw,
        )
        self._reporter.event(
            "install_started",
            f"generation {action.generation}: {action.release} (model {install.model_digest})",
            release=action.release,
            generation=action.generation,
            phase=InstallPhase.FETCHING,
        )
        self._commit(
            replace(self.state, install=install, target_release=action.release, last_error="")
        )

    def already_applied(self, action: r.MarkApplied) -> None:
        """The desired release is the active one already: its generation is applied."""
        watched = self.state.window is not None  # still in its window: not proven yet
        phase = InstallPhase.HEALTH_CHECK if watched else InstallPhase.ACTIVE
        self._reporter.event(
            "already_active",
            f"{action.release} is the active release already",
            release=action.release,
            generation=action.generation,
            phase=phase,
        )
        self._commit(
            replace(
                self.state,
                generation_applied=action.generation,
                phase=phase,
                target_release=action.release,
                last_error="",
                install=None,
            ),
            prune=True,
        )

    def enter(self, phase: InstallPhase) -> None:
        """The install under way moves to ``phase`` (nothing when it is there already)."""
        install = self.state.install
        if install is None or install.phase is phase:
            return
        self._reporter.event(
            PHASE_EVENTS[phase],
            f"generation {install.generation}: {install.phase} -> {phase}",
            release=install.release,
            generation=install.generation,
            phase=phase,
        )
        self._commit(replace(self.state, install=replace(install, phase=phase)))

    def retrying(
        self, install: PendingInstall, exc: Exception, *, attempts: int, delay: float
    ) -> None:
        """Attempt ``attempts`` of ``install`` failed with ``exc``; the next in ``delay`` s."""
        self._reporter.event(
            "install_retry",
            f"attempt {attempts} failed: {exc}; retrying in {delay:.1f}s",
            release=install.release,
            generation=install.generation,
            phase=install.phase,
        )
        self._commit(
            replace(self.state, install=replace(install, attempts=attempts), last_error=str(exc))
        )

    def failed(self, generation: int, release: str, reason: str) -> None:
        """The install of ``generation`` ended as failed: applied, never retried; the active
        model keeps serving."""
        active = self.state.active.release if self.state.active else "none"
        self._reporter.event(
            "install_failed",
            f"{reason} (still serving: {active})",
            release=release,
            generation=generation,
            phase=InstallPhase.FAILED,
        )
        self._commit(
            replace(
                self.state,
                generation_applied=max(self.state.generation_applied, generation),
                phase=InstallPhase.FAILED,
                last_error=reason,
                target_release=release,
                install=None,
            ),
            prune=True,
        )

    def _commit(self, state: DeviceState, *, prune: bool = False) -> None:
        self._ledger.commit(state, prune=prune)
