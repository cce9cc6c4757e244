"""The agent's decisions: what to do next about a desired state, given what the device holds.

Pure (an import-linter contract keeps paho, grpc, onnxruntime and ``_pb2`` out): time comes in
as ``now``, facts about the disk come in as ``Observed``. The result is the whole plan from
here to an active release; the shell (``installing``) carries out its first action (persisting
the install phase before and after a step), then observes again and asks again, so a newer
desired state arriving mid-install is looked at between any two steps.

Install steps and the phase persisted around them (DESIGN.md section 5)::

    Fetch        fetching -> verifying     resumable download into a partial file
    Verify       verifying                 sha256 + size, then into the blob store
    Stage        verifying -> staged       fresh slot dir: model, golden data, signed manifest
    HealthCheck  health_check              load, signature check, golden (or smoke) inference
                                           and latency against the budget (``health``)
    Activate     health_check -> active    state written atomically, then the swap; with a
                 (or health_check while    health window the phase stays ``health_check``
                 the window is open)       until ``watching`` passes or rolls it back

A release with golden data has two blobs, fetched and verified one after the other (model
first) with the same steps. A step's plan comes from facts, not only from the phase, so a
crash anywhere resumes with the work that is really left (a partial download continues, a
half-staged slot is staged again).
"""

from __future__ import annotations

from dataclasses import dataclass

from edgefleet.common.errors import StaleGenerationError
from edgefleet.common.types import DesiredState, HealthPolicy, InstallPhase

SUPPORTED_RUNTIMES = frozenset({"onnxruntime"})
SUPPORTED_ENCODINGS = frozenset({"", "efpk"})  # "" = plain .onnx; "efpk" = packed container


def slot_name(generation: int) -> str:
    """Install slots are named by generation: unique per device, stable across restarts."""
    return f"g{generation}"


@dataclass(frozen=True)
class Progress:
    """An install under way, as persisted plus what is on disk for it."""

    generation: int
    phase: InstallPhase
    retry_at: float = 0.0  # monotonic seconds; 0 = no pending retry
    blob_stored: bool = False  # the verified model blob is in the blob store
    partial_bytes: int = 0  # size of the partial download
    slot_staged: bool = False  # the slot dir for this generation exists
    health_checked: bool = False  # this process loaded the slot and it passed its check
    golden_stored: bool = False  # the verified golden blob is in the blob store
    golden_partial_bytes: int = 0  # size of the golden blob's partial download


@dataclass(frozen=True)
class Observed:
    generation_applied: int = 0
    active_manifest_digest: str = ""
    install: Progress | None = None
    runtimes: frozenset[str] = SUPPORTED_RUNTIMES  # "container" too where Docker answered


# --- actions -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reject:
    """Refuse a desired state; nothing changes but an event says why."""

    generation: int
    release: str
    reason: str


@dataclass(frozen=True)
class MarkApplied:
    """The desired release is the active one already: record the generation, report."""

    generation: int
    release: str


@dataclass(frozen=True)
class Fail:
    """Give up on a generation for good (it stays applied so it is not retried)."""

    generation: int
    release: str
    reason: str


@dataclass(frozen=True)
class Begin:
    """Persist a desired state as the pending install (phase fetching)."""

    generation: int
    release: str
    slot: str


@dataclass(frozen=True)
class Wait:
    """Nothing to do before ``until`` (monotonic seconds): a transient failure backs off."""

    until: float


@dataclass(frozen=True)
class Fetch:
    generation: int
    digest: str
    size: int
    sources: tuple[str, ...]
    offset: int = 0  # bytes already in the partial file; > 0 means the download resumes


@dataclass(frozen=True)
class Verify:
    generation: int
    digest: str
    size: int


@dataclass(frozen=True)
class Stage:
    generation: int
    slot: str
    digest: str
    golden_digest: str = ""  # "" when the release has no golden data


@dataclass(frozen=True)
class HealthCheck:
    generation: int
    slot: str
    policy: HealthPolicy


@dataclass(frozen=True)
class Activate:
    generation: int
    slot: str
    release: str
    window_s: float = 0.0  # > 0: watch the release this long before it counts as passed


Step = Fetch | Verify | Stage | HealthCheck | Activate
Admission = Reject | MarkApplied | Fail | Begin
Action = Admission | Wait | Step

# The phase persisted (and reported) before a step runs, and after it succeeds.
PHASE_BEFORE: dict[type[Step], InstallPhase] = {
    Fetch: InstallPhase.FETCHING,
    Verify: InstallPhase.VERIFYING,
    Stage: InstallPhase.VERIFYING,
    HealthCheck: InstallPhase.HEALTH_CHECK,
    Activate: InstallPhase.HEALTH_CHECK,
}
PHASE_AFTER: dict[type[Step], InstallPhase] = {
    Fetch: InstallPhase.VERIFYING,
    Verify: InstallPhase.VERIFYING,
    Stage: InstallPhase.STAGED,
    HealthCheck: InstallPhase.HEALTH_CHECK,
    Activate: InstallPhase.ACTIVE,
}


def admit(desired: DesiredState, observed: Observed) -> Admission | None:
    """Decide about a desired state that just arrived (verified already).

    None: it is the generation applied or the install under way, so there is nothing new.
    """
    gen, release = desired.generation, str(desired.release)
    applied, install = observed.generation_applied, observed.install
    if gen == applied or (install is not None and gen == install.generation):
        return None  # redelivery (retained message, QoS 1 duplicate, resumed session)
    if gen < applied:
        return Reject(gen, release, str(StaleGenerationError(gen, applied)))
    if install is not None and gen < install.generation:
        reason = (
            f"stale desired state: generation {gen} is older than the install of "
            f"generation {install.generation} under way"
        )
        return Reject(gen, release, reason)
    if desired.manifest.runtime not in observed.runtimes:
        runtime = desired.manifest.runtime
        return Fail(gen, release, f"runtime {runtime!r} is not supported on this device")
    if desired.manifest.model_encoding not in SUPPORTED_ENCODINGS:
        encoding = desired.manifest.model_encoding
        return Fail(gen, release, f"unsupported model encoding {encoding!r}")
    if desired.manifest_digest == observed.active_manifest_digest:
        return MarkApplied(gen, release)
    return Begin(gen, release, slot_name(gen))


def reconcile(
    desired: DesiredState | None,
    observed: Observed,
    *,
    now: float,
    fallback_sources: tuple[str, ...] = (),
) -> list[Action]:
    """The plan for ``desired`` (a verified desired state, new or the pending one)."""
    if desired is None or desired.generation == observed.generation_applied:
        return []
    decision = admit(desired, observed)
    if decision is not None:
        return [decision]
    install = observed.install
    assert install is not None  # admit returns None only for the install under way
    if install.retry_at > now:
        return [Wait(install.retry_at)]
    return _plan(desired, install, fallback_sources=fallback_sources)


def _plan(
    desired: DesiredState, install: Progress, *, fallback_sources: tuple[str, ...]
) -> list[Action]:
    gen, m = desired.generation, desired.manifest
    slot = slot_name(gen)
    steps: list[Action] = []
    early = install.phase in (InstallPhase.FETCHING, InstallPhase.VERIFYING)
    if early or not install.slot_staged:
        blobs = [(m.model_digest, m.model_size, install.blob_stored, install.partial_bytes)]
        if m.golden_digest:
            blobs.append(
                (
                    m.golden_digest,
                    m.golden_size,
                    install.golden_stored,
                    install.golden_partial_bytes,
                )
            )
        for digest, size, stored, partial in blobs:
            if stored:  # only verified bytes ever enter the blob store
                continue
            downloaded = install.phase is InstallPhase.VERIFYING and partial == size
            if not downloaded:
                sources = _unique((*desired.artifact_sources, *fallback_sources))
                if not sources:
                    return [Fail(gen, str(desired.release), "no artifact source to fetch from")]
                steps.append(Fetch(gen, digest, size, sources, partial))
            steps.append(Verify(gen, digest, size))
        steps.append(Stage(gen, slot, m.model_digest, m.golden_digest))
        early = True
    if early or not install.health_checked:
        steps.append(HealthCheck(gen, slot, m.health))
    steps.append(Activate(gen, slot, str(desired.release), max(0.0, m.health.health_window_s)))
    return steps


def _unique(items: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(i for i in items if i))
