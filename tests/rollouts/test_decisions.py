"""The operator's decisions on a rollout, as the engine takes them: pause, resume, abort,
stop-waiting, a busy fleet and fleet rollback, each a new rollout or a one-line refusal."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from edgefleet.controller.rollouts import engine
from edgefleet.controller.rollouts.engine import Refusal, Report, RolloutPhase, TargetState
from tests.rollouts.test_engine import OLD, applied, fleet_on_old, new

P = RolloutPhase


def in_phase(phase: RolloutPhase) -> engine.Rollout:
    """A rollout of four devices in ``phase``: d1 touched (sent, or rolling back once aborted)."""
    r, _ = engine.step(new(canary="1"), fleet_on_old(), now=0)
    if phase in (P.ROLLING_BACK, P.ROLLED_BACK):
        decided = engine.abort(r, fleet_on_old(), reason="test")
        assert not isinstance(decided, Refusal)
        r = decided[0]
        assert r.phase is P.ROLLING_BACK
    paused = P.CANARY if phase is P.PAUSED else None
    return replace(r, phase=phase, paused_phase=paused)


PAUSE_REFUSED = "only a running rollout can be paused"
RESUME_REFUSED = "only a paused rollout can be resumed"


@pytest.mark.parametrize(
    ("decide", "phase", "after", "paused_phase", "refused"),
    [
        (engine.pause, P.PENDING, P.PAUSED, P.PENDING, ""),
        (engine.pause, P.CANARY, P.PAUSED, P.CANARY, ""),
        (engine.pause, P.WAVE, P.PAUSED, P.WAVE, ""),
        (engine.pause, P.PAUSED, P.PAUSED, P.CANARY, ""),  # as it was
        (engine.pause, P.SUCCEEDED, None, None, PAUSE_REFUSED),
        (engine.pause, P.ROLLING_BACK, None, None, PAUSE_REFUSED),
        (engine.pause, P.ROLLED_BACK, None, None, PAUSE_REFUSED),
        (engine.resume, P.PAUSED, P.CANARY, None, ""),
        (engine.resume, P.PENDING, P.PENDING, None, ""),  # as it was
        (engine.resume, P.CANARY, P.CANARY, None, ""),
        (engine.resume, P.WAVE, P.WAVE, None, ""),
        (engine.resume, P.SUCCEEDED, None, None, RESUME_REFUSED),
        (engine.resume, P.ROLLING_BACK, None, None, RESUME_REFUSED),
        (engine.resume, P.ROLLED_BACK, None, None, RESUME_REFUSED),
    ],
)
def test_pause_and_resume(
    decide: Callable[[engine.Rollout], engine.Rollout | Refusal],
    phase: RolloutPhase,
    after: RolloutPhase | None,
    paused_phase: RolloutPhase | None,
    refused: str,
) -> None:
    r = in_phase(phase)
    decided = decide(r)
    if refused:
        assert decided == Refusal(f"rollout r1 is {phase}; {refused}")
        return
    assert isinstance(decided, engine.Rollout)
    assert (decided.phase, decided.paused_phase) == (after, paused_phase)
    assert decided.targets == r.targets
    if phase is after:
        assert decided == r  # nothing to do: the same rollout back


def test_a_paused_rollout_without_its_phase_is_not_resumed() -> None:
    r = replace(in_phase(P.PAUSED), paused_phase=None)
    assert engine.resume(r) == Refusal("rollout r1 is paused; only a paused rollout can be resumed")


@pytest.mark.parametrize(
    ("phase", "after", "sent_back", "refused"),
    [
        (P.PENDING, P.ROLLING_BACK, 1, ""),
        (P.CANARY, P.ROLLING_BACK, 1, ""),
        (P.WAVE, P.ROLLING_BACK, 1, ""),
        (P.PAUSED, P.ROLLING_BACK, 1, ""),
        (P.ROLLING_BACK, P.ROLLED_BACK, 0, ""),  # stops waiting
        (P.SUCCEEDED, None, 0, "rollout r1 has already succeeded"),
        (P.ROLLED_BACK, None, 0, "rollout r1 has already rolled back"),
    ],
)
def test_abort(
    phase: RolloutPhase, after: RolloutPhase | None, sent_back: int, refused: str
) -> None:
    decided = engine.abort(in_phase(phase), fleet_on_old())
    if refused:
        assert decided == Refusal(refused)
        return
    assert not isinstance(decided, Refusal)
    r, commands = decided
    assert r.phase is after and len(commands) == sent_back
    assert all(c.rollback and c.release == OLD for c in commands)
    if phase is not P.ROLLING_BACK:
        assert r.reason == "aborted by the operator"


def test_stop_waiting_finishes_a_rollback_naming_who_did_not_confirm() -> None:
    r = in_phase(P.ROLLING_BACK)
    done = engine.stop_waiting(r)
    assert isinstance(done, engine.Rollout)
    assert done.phase is P.ROLLED_BACK
    assert done.reason == "test; stopped waiting for d1 to confirm"
    d1 = next(t for t in done.targets if t.device_id == "d1")
    assert d1.state is TargetState.ROLLING_BACK  # its rollback stays retained
    assert d1.reason == "rollback not confirmed when the wait stopped"


@pytest.mark.parametrize("phase", [p for p in P if p is not P.ROLLING_BACK])
def test_stop_waiting_refuses_a_rollout_that_waits_for_no_rollback(phase: RolloutPhase) -> None:
    assert engine.stop_waiting(in_phase(phase)) == Refusal(
        f"rollout r1 is {phase}; it waits for no rollback"
    )


@pytest.mark.parametrize("phase", list(P))
def test_busy(phase: RolloutPhase) -> None:
    busy = phase not in (P.SUCCEEDED, P.ROLLED_BACK)  # one rolling back holds its fleet too
    refusal = engine.busy(in_phase(phase))
    if not busy:
        assert refusal is None
        return
    assert refusal == Refusal(
        f"fleet factory-a has an unfinished rollout r1 (digits:1.1.0 {phase}): wait for it or "
        "abort it (edgectl rollout abort r1)"
    )


@pytest.mark.parametrize(
    ("previous", "to_release", "goal"),
    [
        ({"a": "m:1", "b": "m:2"}, "", {"a": "m:1", "b": "m:2", "c": ""}),
        ({"a": "m:1"}, "m:9", {"a": "m:9", "b": "m:9", "c": "m:9"}),
        ({}, "m:9", {"a": "m:9", "b": "m:9", "c": "m:9"}),
        ({}, "", None),
        ({"a": ""}, "", None),
    ],
)
def test_rollback_goal(
    previous: dict[str, str], to_release: str, goal: dict[str, str] | None
) -> None:
    decided = engine.rollback_goal("f", ["a", "b", "c"], previous, to_release=to_release)
    if goal is None:
        assert decided == Refusal(
            "no device of fleet f has a previous release to go back to; name the release to go to"
        )
    else:
        assert decided == goal


def test_fleet_rollback_sends_each_device_to_its_goal_above_every_generation() -> None:
    reports = {
        "a": Report("a", "m:2", "active", generation_applied=3, last_desired=5),
        "b": Report("b", "m:2", "active", generation_applied=7, last_desired=7),
    }
    r, commands = engine.fleet_rollback("rb", "f", {"a": "m:1", "b": "m:1", "c": ""}, reports)
    assert (
        r.phase is P.ROLLING_BACK and r.reason == "fleet rollback to each device's previous release"
    )
    assert [(c.device_id, c.release, c.generation, c.rollback) for c in commands] == [
        ("a", "m:1", 6, True),
        ("b", "m:1", 8, True),
    ]
    c = next(t for t in r.targets if t.device_id == "c")
    assert c.state is TargetState.REVERTED and c.reason == engine.NO_PREVIOUS


def test_fleet_rollback_to_a_named_release() -> None:
    r, commands = engine.fleet_rollback("rb", "f", {"a": "m:0"}, {}, to_release="m:0")
    assert r.release == "m:0" and r.reason == "fleet rollback to m:0"
    assert [(c.device_id, c.release, c.generation) for c in commands] == [("a", "m:0", 1)]


@pytest.mark.parametrize("phase", list(P))
def test_supersede(phase: RolloutPhase) -> None:
    aborted = phase in (P.PENDING, P.CANARY, P.WAVE, P.PAUSED)  # not one rolling back
    before = in_phase(phase)
    r, commands = engine.supersede(before, fleet_on_old(), by="rb")
    if not aborted:
        assert (r, commands) == (before, [])
        return
    assert r.phase is P.ROLLING_BACK and r.reason == "aborted by fleet rollback rb"
    assert [c.device_id for c in commands] == ["d1"]


def test_a_refused_decision_changes_nothing_the_engine_steps() -> None:
    """A refusal is only a value: stepping the same rollout afterwards is as before."""
    r = in_phase(P.SUCCEEDED)
    reports = applied(fleet_on_old(), [])
    assert isinstance(engine.pause(r), Refusal)
    assert engine.step(r, reports, now=5) == (r, [])
