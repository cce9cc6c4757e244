"""Start-up: bring back the last good model and the install that was under way.

The active slot is re-verified (signed manifest, then the model's sha256) before it is
loaded, so the agent never serves bytes that changed on disk; when that fails it falls back to
the previous slot and reports ``rolled_back``. A pending install is re-verified from the
signed desired state it kept, with today's trusted keys, then resumes from its phase.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from edgefleet.agent.metrics import AgentMetrics
from edgefleet.agent.reporting import Reporter
from edgefleet.agent.runtime import LoadedModel, ModelRuntime
from edgefleet.agent.state import DeviceState, SlotInfo, StateFile
from edgefleet.agent.store import DeviceStore
from edgefleet.common.desired import open_desired
from edgefleet.common.errors import EdgeFleetError, IntegrityError
from edgefleet.common.signing import TrustStore
from edgefleet.common.types import DesiredState, InstallPhase

log = logging.getLogger(__name__)


def load_slot(
    store: DeviceStore, trust: TrustStore, slot: SlotInfo, *, metrics: AgentMetrics
) -> ModelRuntime:
    """Verify a slot end to end and load it; raises a ``PermanentError`` naming the problem."""
    manifest, manifest_digest = store.open_slot(slot.slot, trust)
    if manifest_digest != slot.manifest_digest:
        raise IntegrityError(slot.manifest_digest, manifest_digest)
    runtime = ModelRuntime.load(
        store.model_path(slot.slot),
        LoadedModel(
            release=str(manifest.ref),
            slot=slot.slot,
            manifest=manifest,
            manifest_digest=manifest_digest,
        ),
    )
    metrics.model_load.observe(runtime.load_seconds)
    return runtime


@dataclass(frozen=True)
class Restored:
    state: DeviceState
    runtime: ModelRuntime | None
    pending: DesiredState | None


def restore(
    *,
    device_id: str,
    state_file: StateFile,
    store: DeviceStore,
    trust: TrustStore,
    metrics: AgentMetrics,
    reporter: Reporter,
) -> Restored:
    state = state_file.load()
    runtime, state = _restore_active(
        state, store=store, trust=trust, metrics=metrics, reporter=reporter
    )
    pending = None
    install = state.install
    if install is not None:
        try:
            pending = open_desired(install.desired, trust, device_id=device_id)
        except EdgeFleetError as exc:
            reporter.event(
                "desired_rejected",
                f"the pending install of generation {install.generation} no longer "
                f"verifies: {type(exc).__name__}: {exc}",
                release=install.release,
                generation=install.generation,
            )
            phase = InstallPhase.ACTIVE if state.active else InstallPhase.IDLE
            state = replace(state, install=None, phase=phase)
        else:
            log.info(
                "resuming the install of %s (generation %d) at %s",
                install.release,
                install.generation,
                install.phase,
            )
    state_file.save(state)
    return Restored(state, runtime, pending)


def _restore_active(
    state: DeviceState,
    *,
    store: DeviceStore,
    trust: TrustStore,
    metrics: AgentMetrics,
    reporter: Reporter,
) -> tuple[ModelRuntime | None, DeviceState]:
    problems: list[str] = []
    for which, slot in (("active", state.active), ("previous", state.previous)):
        if slot is None:
            continue
        try:
            runtime = load_slot(store, trust, slot, metrics=metrics)
        except EdgeFleetError as exc:
            log.error("cannot restore the %s slot %s (%s): %s", which, slot.slot, slot.release, exc)
            problems.append(f"{which} {slot.release} (slot {slot.slot}): {exc}")
            continue
        if which == "active":
            log.info("serving %s from slot %s", slot.release, slot.slot)
            return runtime, state
        reason = f"fell back to {slot.release}: {problems[0]}"
        reporter.event("rolled_back", reason, release=slot.release, phase=InstallPhase.ROLLED_BACK)
        return runtime, replace(
            state, active=slot, previous=None, phase=InstallPhase.ROLLED_BACK, last_error=reason
        )
    if problems:
        reason = "no verifiable model left: " + "; ".join(problems)
        reporter.event("model_lost", reason, phase=InstallPhase.FAILED)
        return None, replace(
            state, active=None, previous=None, phase=InstallPhase.FAILED, last_error=reason
        )
    return None, state
