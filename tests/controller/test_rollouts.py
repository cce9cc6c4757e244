"""Staged, health-gated rollouts end to end: real broker, real gRPC, real SQLite, and simulated
agents (paho clients that open each signed desired state and report what came of it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from edgefleet.common import types as t
from edgefleet.demo.digits import TrainedModel
from edgefleet.v1 import controller_pb2 as pb
from tests.conftest import Broker
from tests.controller import support
from tests.controller.support import NEW, OLD, Outcome


def deploy(ctl: support.Running, fleet: str, **strategy: Any) -> pb.DeployResponse:
    request = pb.DeployRequest(release=NEW, fleet=fleet, strategy=support.strategy(**strategy))
    return ctl.stub.Deploy(request, timeout=support.DEADLINE)


def test_canary_then_waves_to_succeeded(
    ctl: support.Running, agents: support.Agents, digits_model: TrainedModel
) -> None:
    support.releases(ctl.stub, digits_model.onnx_bytes, "1.0.0", "1.1.0")
    fleet, devs = agents.fleet(ctl, 4)

    answer = deploy(ctl, fleet, kind="canary", canary="1", waves="50%")
    info = support.wait_phase(ctl.stub, answer.rollout_id, "succeeded")

    assert [x.device_id for x in answer.targets] == [devs[0].device_id], "the canary alone"
    assert list(info.step_sizes) == [1, 2, 4]
    assert (info.release, info.fleet, info.strategy.strategy_kind, info.strategy.waves) == (
        NEW,
        fleet,
        pb.STRATEGY_KIND_CANARY,
        "50%",
    )
    assert set(support.device_states(info).values()) == {"healthy"}
    assert {d.previous_release for d in info.devices} == {OLD}
    sent = {d.device_id: d.sent_at_ms for d in info.devices}
    canary = sent.pop(devs[0].device_id)
    assert canary < min(sent.values()), "the waves go out after the canary reported"
    assert [a.generations for a in devs] == [[(2, NEW)]] * 4
    listed = ctl.stub.ListRollouts(pb.ListRolloutsRequest(fleet=fleet), timeout=5).rollouts
    assert [r.rollout_id for r in listed] == [answer.rollout_id]


@pytest.mark.parametrize(
    "outcome",
    [
        Outcome(t.InstallPhase.FAILED, error="model failed to load: bad opset"),
        Outcome(t.InstallPhase.ROLLED_BACK, error="golden output mismatch"),
    ],
    ids=["load-failure", "device-rolled-back"],
)
def test_a_failing_canary_rolls_back_and_no_other_device_sees_the_release(
    ctl: support.Running, agents: support.Agents, digits_model: TrainedModel, outcome: Outcome
) -> None:
    support.releases(ctl.stub, digits_model.onnx_bytes, "1.0.0", "1.1.0")
    fleet, devs = agents.fleet(
        ctl, 4, behaviour=lambda release: outcome if release == NEW else Outcome()
    )

    answer = deploy(ctl, fleet, kind="canary", canary="1", waves="50%")
    info = support.wait_phase(ctl.stub, answer.rollout_id, "rolled_back")

    assert outcome.error in info.reason
    assert devs[0].generations == [(2, NEW), (3, OLD)], "back to its release, newer generation"
    assert [a.generations for a in devs[1:]] == [[], [], []], "never sent the bad release"
    states = support.device_states(info)
    assert list(states.values()) == ["reverted", "waiting", "waiting", "waiting"]
    scrape = generate_latest(ctl.controller.metrics.registry).decode()
    assert f'edgefleet_rollouts_aborted_total{{fleet="{fleet}"}} 1.0' in scrape
    labels = f'fleet="{fleet}",phase="rolled_back",release="{NEW}",rollout="{answer.rollout_id}"'
    assert f"edgefleet_rollout_phase{{{labels}}} 1.0" in scrape


def test_a_slow_release_stops_at_the_canary_on_the_p95_gate(
    ctl: support.Running, agents: support.Agents, digits_model: TrainedModel
) -> None:
    support.releases(ctl.stub, digits_model.onnx_bytes, "1.0.0", "1.1.0")
    fleet, devs = agents.fleet(
        ctl,
        3,
        baseline_p95_ms=2.0,
        behaviour=lambda release: Outcome(p95_ms=6.0 if release == NEW else 2.0),
    )

    answer = deploy(ctl, fleet, kind="canary", canary="1", bake="500ms")
    info = support.wait_phase(ctl.stub, answer.rollout_id, "rolled_back")

    line = (
        f"canary {devs[0].device_id} failed the latency gate: p95 6.00 ms > 1.5x baseline 2.00 ms"
    )
    assert info.reason.startswith(line), info.reason
    assert info.devices[0].reason.startswith("latency gate: p95 6.00 ms > 1.5x baseline 2.00 ms")
    history = [(h.kind, h.device_id, h.old, h.new) for h in info.history]
    assert history[0] == ("device", devs[0].device_id, "waiting", "sent")
    assert ("device", devs[0].device_id, "sent", "failed") in history
    assert history[-2:] == [("device", devs[0].device_id, "rolling_back", "reverted"),
                            ("phase", "", "rolling_back", "rolled_back")]  # fmt: skip
    gates = [h.message for h in info.history if h.kind == "gate" and h.device_id]
    assert len(gates) == 1 and gates[0].startswith(line)
    assert [h.at_ms for h in info.history] == sorted(h.at_ms for h in info.history)
    events = ctl.stub.ListEvents(pb.ListEventsRequest(device_id=devs[0].device_id)).events
    assert any(e.kind == "rollout_gate_failed" and e.message.startswith(line) for e in events)
    (listed,) = ctl.stub.ListRollouts(pb.ListRolloutsRequest(fleet=fleet)).rollouts
    assert not listed.history, "only GetRollout carries the history"
    assert devs[0].generations == [(2, NEW), (3, OLD)]
    assert [a.generations for a in devs[1:]] == [[], []]


def test_an_offline_device_times_out_within_the_failure_budget_and_converges_later(
    ctl: support.Running, agents: support.Agents, digits_model: TrainedModel
) -> None:
    support.releases(ctl.stub, digits_model.onnx_bytes, "1.0.0", "1.1.0")
    fleet, devs = agents.fleet(ctl, 4)
    offline = devs[2]
    offline.close()

    answer = deploy(ctl, fleet, kind="canary", canary="1", device_timeout="1s", max_failures="1")
    info = support.wait_phase(ctl.stub, answer.rollout_id, "succeeded")

    states = support.device_states(info)
    assert states.pop(offline.device_id) == "failed"
    assert set(states.values()) == {"healthy"}
    why = next(d.reason for d in info.devices if d.device_id == offline.device_id)
    assert why == "no report within 1s: it last reported generation 1, active on digits:1.0.0"

    offline.connect()  # back: the retained desired state is waiting for it
    support.eventually(
        lambda: any(
            d.device_id == offline.device_id and d.active_release == NEW
            for d in ctl.stub.ListDevices(pb.ListDevicesRequest(fleet=fleet)).devices
        ),
        what="the late device on the new release",
    )
    assert offline.generations == [(2, NEW)]


def test_a_controller_restarted_mid_rollout_carries_on(
    tmp_path: Path, broker: Broker, agents: support.Agents, digits_model: TrainedModel
) -> None:
    settings = support.settings(tmp_path, broker.url)
    first = support.start(settings)
    try:
        support.releases(first.stub, digits_model.onnx_bytes, "1.0.0", "1.1.0")
        fleet, devs = agents.fleet(first, 4, behaviour=lambda release: Outcome(hold=release == NEW))
        devs[0].behaviour = support.works
        answer = deploy(first, fleet, kind="canary", canary="1", bake="300ms")
        support.eventually(
            lambda: all(a.held for a in devs[1:]), what="the wave on its way to the devices"
        )
    finally:
        first.stop()
    for a in devs[1:]:  # the wave installs while no controller runs
        a.go()

    second = support.start(settings)
    try:
        info = support.wait_phase(second.stub, answer.rollout_id, "succeeded")
    finally:
        second.stop()

    assert set(support.device_states(info).values()) == {"healthy"}
    for a in devs:
        assert set(a.generations) == {(2, NEW)}, "the same generation, at most sent again"


def test_a_device_still_checking_its_health_holds_the_canary(
    ctl: support.Running, agents: support.Agents, digits_model: TrainedModel
) -> None:
    support.releases(ctl.stub, digits_model.onnx_bytes, "1.0.0", "1.1.0")
    fleet, devs = agents.fleet(ctl, 2, behaviour=lambda release: Outcome(hold=release == NEW))
    answer = deploy(ctl, fleet, kind="canary", canary="1")
    support.eventually(lambda: devs[0].held, what="the canary's desired state")

    devs[0].go(Outcome(t.InstallPhase.HEALTH_CHECK))
    support.reported(ctl, devs[0].device_id, fleet, t.InstallPhase.HEALTH_CHECK, generation=2)
    support.ticked(ctl, agents)  # the driver has stepped the rollout since: and still holds
    info = support.get_rollout(ctl.stub, answer.rollout_id)
    state = support.device_states(info)[devs[0].device_id]
    assert (info.rollout_phase, state) == (pb.ROLLOUT_PHASE_CANARY, "sent")
    assert devs[1].generations == []


def test_device_timeouts_follow_the_injected_clock(
    tmp_path: Path, broker: Broker, agents: support.Agents, digits_model: TrainedModel
) -> None:
    clock = support.ManualClock()
    ctl = support.start(support.settings(tmp_path, broker.url), clock=clock)
    try:
        support.releases(ctl.stub, digits_model.onnx_bytes, "1.0.0", "1.1.0")
        fleet, devs = agents.fleet(ctl, 2)
        devs[0].close()  # the canary is away
        answer = deploy(ctl, fleet, kind="canary", canary="1", max_failures="1")
        support.ticked(ctl, agents)  # ticks, but no time passes
        waiting = support.get_rollout(ctl.stub, answer.rollout_id)
        clock.advance(301)  # past the default 5 minute device timeout
        info = support.wait_phase(ctl.stub, answer.rollout_id, "succeeded")
    finally:
        ctl.stop()

    assert support.device_states(waiting) == {
        devs[0].device_id: "sent",
        devs[1].device_id: "waiting",
    }
    assert support.device_states(info) == {
        devs[0].device_id: "failed",
        devs[1].device_id: "healthy",
    }
    assert info.devices[0].reason.startswith("no report within 300s: it last reported generation")
    assert info.created_at_ms == 1_700_000_000_000
