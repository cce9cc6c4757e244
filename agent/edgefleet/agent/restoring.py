"""Start-up: bring back the last good model and the install that was under way.

The active slot is re-verified (signed manifest, then the model's and golden data's sha256)
before it is loaded, so the agent never serves bytes that changed on disk; when that fails it
falls back to the previous slot and reports ``rolled_back`` (``switching.fall_back``, where
every switch of the active model lives). ``health.start_plan`` decides the
rest: a state with an open health window means the agent died (or stopped) while watching a
release that never passed, so it goes back to the previous slot without loading it; an active
slot that failed to load ``max_load_failures`` times in a row (each attempt is counted in
``state.json`` before it is made, so a crash while loading counts) is rolled back too. A
pending install is re-verified from the signed desired state it kept, with today's trusted
keys, then resumes from its phase.

``state.json`` missing or unreadable: the state is rebuilt from the slots on disk instead of
starting empty (which would prune every slot): each slot is re-verified end to end, and its
generation proven by the signed desired state kept with it (``desired.signed``; a slot staged
before that file existed counts by its name, ``g<generation>``). The highest proven generation
becomes the active slot and ``generation_applied``, the next one the previous slot; the
unreadable file is kept as ``state.json.corrupt`` and event ``state_rebuilt`` says what came
back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from edgefleet.agent import failpoints, health, switching
from edgefleet.agent.errors import StateFileError
from edgefleet.agent.metrics import AgentMetrics
from edgefleet.agent.reporting import Reporter
from edgefleet.agent.runtime import LoadedModel, ModelRuntime
from edgefleet.agent.state import DeviceState, SlotInfo, StateFile
from edgefleet.agent.store import SlotStore
from edgefleet.agent.switching import load_verified, verify_slot
from edgefleet.agent.variants import resolve_desired
from edgefleet.common.desired import open_desired
from edgefleet.common.errors import EdgeFleetError, IntegrityError, ModelLoadError
from edgefleet.common.signing import TrustStore
from edgefleet.common.types import DesiredState, InstallPhase

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Restored:
    state: DeviceState
    runtime: ModelRuntime | None
    pending: DesiredState | None


def restore(
    *,
    device_id: str,
    state_file: StateFile,
    store: SlotStore,
    trust: TrustStore,
    metrics: AgentMetrics,
    reporter: Reporter,
) -> Restored:
    state = _load_or_rebuild(state_file, store, trust, device_id=device_id, reporter=reporter)
    starting = _Start(
        state_file=state_file, store=store, trust=trust, metrics=metrics, reporter=reporter
    )
    runtime, state = starting.active(state)
    pending = None
    install = state.install
    if install is not None:
        try:
            pending = resolve_desired(open_desired(install.desired, trust, device_id=device_id))
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


def _load_or_rebuild(
    state_file: StateFile,
    store: SlotStore,
    trust: TrustStore,
    *,
    device_id: str,
    reporter: Reporter,
) -> DeviceState:
    problem = ""
    if state_file.exists():
        try:
            return state_file.load()
        except StateFileError as exc:
            aside = state_file.set_aside()
            problem = f"{exc}; set aside as {aside.name}"
            log.error("%s", problem)
    else:
        problem = f"{state_file.path.name} is missing"
    if not store.slot_names():
        return DeviceState()
    state, notes = rebuild(store, trust, device_id=device_id)
    kept = ", ".join(f"{s.slot} ({s.release})" for s in (state.active, state.previous) if s)
    message = f"{problem}: rebuilt from the signed slots: {kept or 'none verifies'}"
    if notes:
        message += "; " + "; ".join(notes)
    reporter.event(
        "state_rebuilt",
        message,
        release=state.active.release if state.active else "",
        generation=state.generation_applied,
        phase=state.phase,
    )
    state_file.save(state)
    return state


def rebuild(
    store: SlotStore, trust: TrustStore, *, device_id: str
) -> tuple[DeviceState, list[str]]:
    """The state the verified slots on disk prove, and a note per slot that did not verify."""
    proven: list[tuple[int, SlotInfo]] = []
    notes: list[str] = []
    for slot in store.slot_names():
        try:
            manifest, manifest_digest = store.open_slot(slot, trust)
            generation = _slot_generation(
                store, trust, slot, device_id=device_id, manifest_digest=manifest_digest
            )
        except (EdgeFleetError, OSError) as exc:
            notes.append(f"slot {slot} left out: {exc}")
            continue
        info = SlotInfo(
            slot=slot,
            release=str(manifest.ref),
            manifest_digest=manifest_digest,
            model_digest=manifest.model_digest,
            golden_digest=manifest.golden_digest,
        )
        proven.append((generation, info))
    proven.sort(key=lambda p: p[0], reverse=True)
    if not proven:
        return DeviceState(), notes
    (generation, active), *older = proven
    return (
        DeviceState(
            generation_applied=generation,
            phase=InstallPhase.ACTIVE,
            target_release=active.release,
            active=active,
            previous=older[0][1] if older else None,
        ),
        notes,
    )


def _slot_generation(
    store: SlotStore, trust: TrustStore, slot: str, *, device_id: str, manifest_digest: str
) -> int:
    """The generation the slot's signed desired state proves (its name's, without one)."""
    named = int(slot[1:])
    raw = store.slot_desired(slot)
    if raw is None:
        return named
    desired = open_desired(raw, trust, device_id=device_id, at_any_time=True)
    if desired.manifest_digest != manifest_digest or desired.generation != named:
        raise IntegrityError(desired.manifest_digest, manifest_digest)
    return desired.generation


@dataclass(frozen=True)
class _Start:
    state_file: StateFile
    store: SlotStore
    trust: TrustStore
    metrics: AgentMetrics
    reporter: Reporter

    def active(self, state: DeviceState) -> tuple[ModelRuntime | None, DeviceState]:
        slot = state.active
        if slot is None:
            return None, state
        if state.window is not None:
            plan = health.start_plan(release=slot.release, window_open=True, load_failures=0)
            assert isinstance(plan, health.RollBack)
            return self._fall_back(state, plan.reason)
        try:
            model = verify_slot(self.store, self.trust, slot)
        except EdgeFleetError as exc:
            log.error("cannot restore the active slot %s (%s): %s", slot.slot, slot.release, exc)
            return self._fall_back(state, f"active {slot.release} (slot {slot.slot}): {exc}")
        return self._load(state, model)

    def _load(
        self, state: DeviceState, model: LoadedModel
    ) -> tuple[ModelRuntime | None, DeviceState]:
        while True:
            plan = health.start_plan(
                model.manifest.health,
                release=model.release,
                window_open=False,
                load_failures=state.load_failures,
                last_failure=state.load_error,
            )
            if isinstance(plan, health.RollBack):
                return self._fall_back(state, plan.reason)
            state = replace(state, load_failures=state.load_failures + 1)
            self.state_file.save(state)  # counted before trying: a crash while loading counts
            failpoints.hit("load_active")
            try:
                runtime = load_verified(self.store, model, metrics=self.metrics)
            except ModelLoadError as exc:
                log.error("loading %s failed: %s", model.release, exc)
                state = replace(state, load_error=str(exc))
                continue
            log.info("serving %s from slot %s", model.release, model.slot)
            return runtime, replace(state, load_failures=0, load_error="")

    def _fall_back(
        self, state: DeviceState, problem: str
    ) -> tuple[ModelRuntime | None, DeviceState]:
        """Serve the previous slot instead of the active one (``problem`` says why)."""
        return switching.fall_back(
            state,
            problem,
            store=self.store,
            trust=self.trust,
            metrics=self.metrics,
            reporter=self.reporter,
        )
