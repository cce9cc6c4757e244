"""A rollout's history from the engine's successive states: only changes, in order, bounded."""

from __future__ import annotations

from edgefleet.controller.rollouts import engine, history
from edgefleet.controller.rollouts.engine import Rollout
from edgefleet.controller.rollouts.history import Kind, Transition
from tests.rollouts.test_engine import applied, fleet_on_old, new


def run(r: Rollout, before: Rollout | None, log: list[Transition], at: int) -> Rollout:
    log.extend(history.transitions(before, r, at_ms=at))
    return r


def test_a_failing_canary_leaves_its_gate_decision_and_each_change_once() -> None:
    log: list[Transition] = []
    reports = fleet_on_old()
    start = new(canary="1", waves="50%")
    r, cmds = engine.step(start, reports, now=0)
    run(r, None, log, 0)
    same, _ = engine.step(r, reports, now=0.5)
    assert history.transitions(r, same, at_ms=500) == [], "nothing changed, nothing recorded"
    reports = applied(reports, cmds, p95=9.0)
    after, _ = engine.step(r, reports, now=1)
    run(after, r, log, 1000)

    seen = [(h.at_ms, h.kind.value, h.device_id, h.old, h.new) for h in log]
    assert seen == [
        (0, "device", "d1", "waiting", "sent"),
        (0, "phase", "", "", "canary"),
        (1000, "device", "d1", "sent", "failed"),
        (1000, "device", "d1", "failed", "rolling_back"),
        (1000, "gate", "d1", "", "failed"),
        (1000, "gate", "", "", "failed"),
        (1000, "phase", "", "canary", "rolling_back"),
    ]
    line = "canary d1 failed the latency gate: p95 9.00 ms > 1.5x baseline 2.00 ms"
    assert log[2].message.startswith(line) and log[4].message.startswith(line)
    assert log[5].message.startswith(line) and "1 of 1 devices failed" in log[5].message
    assert log[6].message == log[5].message, "the phase change carries the rollout's reason"


def test_a_device_that_fails_within_the_budget_is_a_gate_decision_of_its_own() -> None:
    reports = fleet_on_old()
    r, cmds = engine.step(new(canary="1", max_failures="100%"), reports, now=0)
    reports = applied(reports, cmds, phase="failed", error="ModelLoadError: bad opset")
    after, _ = engine.step(r, reports, now=1)

    got = history.transitions(r, after, at_ms=1)
    failed = [h for h in got if h.device_id == "d1"]
    assert [(h.kind, h.new) for h in failed] == [(Kind.DEVICE, "failed"), (Kind.GATE, "failed")]
    assert failed[1].message == "canary d1 failed on the device: bad opset"
    assert any(h.kind is Kind.GATE and h.new == "passed" for h in got), "the canary step passed"


def test_the_history_is_bounded_but_keeps_phase_changes_and_gate_decisions() -> None:
    device = Transition(1, Kind.DEVICE, "d1", "waiting", "sent")
    phase = Transition(1, Kind.PHASE, "", "canary", "rolling_back")
    assert history.bounded([device, phase], have=0) == [device, phase]
    assert history.bounded([device, phase], have=history.LIMIT) == [phase]
    assert history.bounded([device, phase], have=history.LIMIT + history.RESERVE) == []
