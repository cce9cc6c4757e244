"""The pure core as tables: (desired, observed, now) -> actions. No sockets, no mocks."""

from __future__ import annotations

import pytest

from edgefleet.agent import reconcile as r
from edgefleet.common import types as t
from edgefleet.common.types import InstallPhase as P

DIGEST = "sha256:" + "ab" * 32
MANIFEST_DIGEST = "sha256:" + "cd" * 32
SIZE = 1000
SRC = "ctl:50051"


def desired(
    generation: int = 5,
    *,
    runtime: str = "onnxruntime",
    sources: tuple[str, ...] = (SRC,),
    budget: float = 0.0,
) -> t.DesiredState:
    manifest = t.Manifest(
        name="digits",
        version="1.2.0",
        model_digest=DIGEST,
        model_size=SIZE,
        inputs=(t.TensorSpec("pixels", "float32", (-1, 64)),),
        outputs=(),
        runtime=runtime,
        health=t.HealthPolicy(latency_budget_ms=budget),
    )
    return t.DesiredState(
        device_id="d1",
        fleet="f",
        generation=generation,
        release=manifest.ref,
        manifest_digest=MANIFEST_DIGEST,
        manifest=manifest,
        artifact_sources=sources,
    )


def installing(phase: P, generation: int = 5, **facts: object) -> r.Observed:
    return r.Observed(
        generation_applied=4,
        install=r.Progress(generation=generation, phase=phase, **facts),  # type: ignore[arg-type]
    )


REL = "digits:1.2.0"
FETCH = r.Fetch(5, DIGEST, SIZE, (SRC,))
VERIFY = r.Verify(5, DIGEST, SIZE)
STAGE = r.Stage(5, "g5", DIGEST)
CHECK = r.HealthCheck(5, "g5", t.HealthPolicy())
ACTIVATE = r.Activate(5, "g5", REL)


@pytest.mark.parametrize(
    ("name", "want", "observed"),
    [
        ("nothing applied yet: begin", [r.Begin(5, REL, "g5")], r.Observed()),
        ("newer than applied: begin", [r.Begin(5, REL, "g5")], r.Observed(generation_applied=4)),
        ("redelivery of the applied generation: ignore", [], r.Observed(generation_applied=5)),
        (
            "same release already active: just record the generation",
            [r.MarkApplied(5, REL)],
            r.Observed(generation_applied=3, active_manifest_digest=MANIFEST_DIGEST),
        ),
        (
            "newer than the install under way: supersede it",
            [r.Begin(5, REL, "g5")],
            installing(P.FETCHING, generation=4),
        ),
    ],
)
def test_admission(name: str, want: list[r.Action], observed: r.Observed) -> None:
    assert r.reconcile(desired(), observed, now=0.0) == want, name


@pytest.mark.parametrize(
    ("generation", "observed", "reason"),
    [
        (3, r.Observed(generation_applied=5), "generation 3 is not newer than applied 5"),
        (5, installing(P.FETCHING, generation=6), "older than the install of generation 6"),
    ],
)
def test_stale_generations_are_rejected(generation: int, observed: r.Observed, reason: str) -> None:
    [action] = r.reconcile(desired(generation), observed, now=0.0)
    assert isinstance(action, r.Reject)
    assert "stale" in action.reason and reason in action.reason


def test_unsupported_runtime_fails_the_generation() -> None:
    [action] = r.reconcile(desired(runtime="tensorrt"), r.Observed(), now=0.0)
    assert isinstance(action, r.Fail) and "tensorrt" in action.reason


def test_no_desired_state_means_nothing_to_do() -> None:
    assert r.reconcile(None, r.Observed(generation_applied=9), now=0.0) == []


@pytest.mark.parametrize(
    ("name", "observed", "plan"),
    [
        ("fresh install", installing(P.FETCHING), [FETCH, VERIFY, STAGE, CHECK, ACTIVATE]),
        (
            "partial download resumes from its size",
            installing(P.FETCHING, partial_bytes=400),
            [r.Fetch(5, DIGEST, SIZE, (SRC,), offset=400), VERIFY, STAGE, CHECK, ACTIVATE],
        ),
        (
            "downloaded, crashed before verifying",
            installing(P.VERIFYING, partial_bytes=SIZE),
            [VERIFY, STAGE, CHECK, ACTIVATE],
        ),
        (
            "verifying but the partial file is gone: download again",
            installing(P.VERIFYING),
            [FETCH, VERIFY, STAGE, CHECK, ACTIVATE],
        ),
        (
            "blob verified and stored: stage",
            installing(P.VERIFYING, blob_stored=True),
            [STAGE, CHECK, ACTIVATE],
        ),
        (
            "blob of the release already in the store: no download",
            installing(P.FETCHING, blob_stored=True),
            [STAGE, CHECK, ACTIVATE],
        ),
        (
            "slot left by a crash before 'staged' was persisted: stage afresh",
            installing(P.VERIFYING, blob_stored=True, slot_staged=True),
            [STAGE, CHECK, ACTIVATE],
        ),
        (
            "staged",
            installing(P.STAGED, blob_stored=True, slot_staged=True),
            [CHECK, ACTIVATE],
        ),
        (
            "crashed during the health check: check again",
            installing(P.HEALTH_CHECK, blob_stored=True, slot_staged=True),
            [CHECK, ACTIVATE],
        ),
        (
            "health check passed in this process",
            installing(P.HEALTH_CHECK, blob_stored=True, slot_staged=True, health_checked=True),
            [ACTIVATE],
        ),
        (
            "staged slot vanished: stage it again from the stored blob",
            installing(P.HEALTH_CHECK, blob_stored=True),
            [STAGE, CHECK, ACTIVATE],
        ),
    ],
)
def test_install_plan(name: str, observed: r.Observed, plan: list[r.Action]) -> None:
    assert r.reconcile(desired(), observed, now=100.0) == plan, name


def test_transient_failure_waits_until_the_retry_time() -> None:
    observed = installing(P.FETCHING, retry_at=150.0)
    assert r.reconcile(desired(), observed, now=100.0) == [r.Wait(150.0)]
    assert r.reconcile(desired(), observed, now=150.5)[0] == FETCH


@pytest.mark.parametrize(
    ("sources", "fallback", "want"),
    [
        ((SRC,), ("ctl2:1",), (SRC, "ctl2:1")),
        ((), ("ctl2:1",), ("ctl2:1",)),
        ((SRC, "n:1"), (SRC,), (SRC, "n:1")),  # the controller listed twice is tried once
    ],
)
def test_sources_in_order_then_the_fallback(
    sources: tuple[str, ...], fallback: tuple[str, ...], want: tuple[str, ...]
) -> None:
    plan = r.reconcile(
        desired(sources=sources), installing(P.FETCHING), now=0.0, fallback_sources=fallback
    )
    assert isinstance(plan[0], r.Fetch) and plan[0].sources == want


def test_no_source_at_all_fails() -> None:
    [action] = r.reconcile(desired(sources=()), installing(P.FETCHING), now=0.0)
    assert isinstance(action, r.Fail) and "no artifact source" in action.reason


@pytest.mark.parametrize(
    ("step", "before", "after"),
    [
        (r.Fetch, P.FETCHING, P.VERIFYING),
        (r.Verify, P.VERIFYING, P.VERIFYING),
        (r.Stage, P.VERIFYING, P.STAGED),
        (r.HealthCheck, P.HEALTH_CHECK, P.HEALTH_CHECK),
        (r.Activate, P.HEALTH_CHECK, P.ACTIVE),
    ],
)
def test_phases_around_each_step(step: type[r.Step], before: P, after: P) -> None:
    assert r.PHASE_BEFORE[step] is before
    assert r.PHASE_AFTER[step] is after


@pytest.mark.parametrize(
    ("name", "observed", "want"),
    [
        ("redelivery of the applied generation", r.Observed(generation_applied=5), None),
        ("redelivery of the install under way", installing(P.HEALTH_CHECK), None),
        ("a newer one", r.Observed(generation_applied=4), r.Begin(5, REL, "g5")),
    ],
)
def test_admit_says_what_a_message_brings(
    name: str, observed: r.Observed, want: r.Admission | None
) -> None:
    """``admit`` alone decides about an arriving message: a duplicate never re-plans."""
    assert r.admit(desired(sources=()), observed) == want, name
