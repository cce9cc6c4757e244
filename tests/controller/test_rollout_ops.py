"""Operating rollouts over gRPC: strategy validation, one rollout per fleet, pause, resume,
abort, and the fleet Rollback RPC."""

from __future__ import annotations

from functools import partial
from typing import Any

import grpc
import pytest

from edgefleet.common import desired, topics
from edgefleet.common import types as t
from edgefleet.demo.digits import TrainedModel
from edgefleet.v1 import controller_pb2 as pb
from tests.controller import support
from tests.controller.support import NEW, NEWER, OLD, Outcome


def ref(rollout_id: str) -> pb.RolloutRef:
    return pb.RolloutRef(rollout_id=rollout_id)


@pytest.mark.parametrize(
    ("strategy", "message"),
    [
        ({"kind": "rollback"}, "--strategy must be one of all-at-once, canary, got 'rollback'"),
        ({"strategy_kind": 99}, "--strategy: unknown strategy kind 99"),
        ({"kind": "canary", "canary": "ten"}, "--canary: expected a count like 2 or a share"),
        ({"kind": "canary", "waves": "50%,25%"}, "--waves are cumulative and must increase"),
        ({"kind": "canary", "bake": "soon"}, "--bake: expected a duration like 30s"),
        ({"canary": "1"}, "--canary and --waves need --strategy canary"),
        ({"max_failures": "120%"}, "--max-failures: '120%' is not between 0% and 100%"),
    ],
)
def test_an_invalid_strategy_is_refused_before_anything_is_sent(
    ctl: support.Running,
    device: support.Device,
    digits_model: TrainedModel,
    strategy: dict[str, Any],
    message: str,
) -> None:
    support.releases(ctl.stub, digits_model.onnx_bytes, "1.0.0", "1.1.0")
    fleet, dev = support.unique("fleet"), support.unique("dev")
    device.status(dev, fleet)
    support.eventually(lambda: ctl.stub.ListDevices(pb.ListDevicesRequest(fleet=fleet)).devices)
    device.subscribe(topics.desired(dev))

    request = pb.DeployRequest(release=NEW, fleet=fleet, strategy=support.strategy(**strategy))
    err = support.rpc_error(lambda: ctl.stub.Deploy(request, timeout=5))

    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.message.startswith(message) and "\n" not in err.message
    assert not ctl.stub.ListRollouts(pb.ListRolloutsRequest(fleet=fleet), timeout=5).rollouts
    # Nothing was sent: the first desired state the device gets is that of a valid deploy
    # made after (one publisher, one topic: the broker keeps their order).
    valid = ctl.stub.Deploy(pb.DeployRequest(release=NEW, fleet=fleet), timeout=5)
    first = desired.open_desired(
        bytes(device.next_message().payload), support.trust(ctl.stub), device_id=dev
    )
    assert first.rollout_id == valid.rollout_id


def test_pause_resume_and_one_rollout_per_fleet(
    ctl: support.Running, agents: support.Agents, digits_model: TrainedModel
) -> None:
    support.releases(ctl.stub, digits_model.onnx_bytes, "1.0.0", "1.1.0", "1.2.0")
    fleet, devs = agents.fleet(ctl, 3, behaviour=lambda release: Outcome(hold=release == NEW))
    strategy = support.strategy(kind="canary", canary="1")
    answer = ctl.stub.Deploy(pb.DeployRequest(release=NEW, fleet=fleet, strategy=strategy))
    rid = answer.rollout_id
    support.eventually(lambda: devs[0].held, what="the canary's desired state")

    busy = support.rpc_error(lambda: ctl.stub.Deploy(pb.DeployRequest(release=NEWER, fleet=fleet)))
    assert busy.code == grpc.StatusCode.FAILED_PRECONDITION
    assert f"unfinished rollout {rid}" in busy.message

    paused = pb.ROLLOUT_PHASE_PAUSED
    assert ctl.stub.PauseRollout(ref(rid), timeout=5).rollout_phase == paused
    assert ctl.stub.PauseRollout(ref(rid), timeout=5).rollout_phase == paused, "idempotent"
    devs[0].go()
    support.reported(ctl, devs[0].device_id, fleet, t.InstallPhase.ACTIVE, generation=2)
    support.ticked(ctl, agents)  # the driver has stepped the paused rollout since
    info = support.get_rollout(ctl.stub, rid)
    assert info.rollout_phase == pb.ROLLOUT_PHASE_PAUSED
    assert [a.generations for a in devs[1:]] == [[], []], "nothing sent while paused"

    for a in devs[1:]:
        a.behaviour = support.works
    resumed = ctl.stub.ResumeRollout(ref(rid), timeout=5).rollout_phase
    assert resumed in (pb.ROLLOUT_PHASE_CANARY, pb.ROLLOUT_PHASE_WAVE, pb.ROLLOUT_PHASE_SUCCEEDED)
    support.wait_phase(ctl.stub, rid, "succeeded")
    assert [a.generations for a in devs] == [[(2, NEW)]] * 3

    for call in (ctl.stub.PauseRollout, ctl.stub.ResumeRollout, ctl.stub.AbortRollout):
        done = support.rpc_error(partial(call, ref(rid), timeout=5))
        assert done.code == grpc.StatusCode.FAILED_PRECONDITION, call
        assert "succeeded" in done.message
    for call in (
        ctl.stub.GetRollout,
        ctl.stub.PauseRollout,
        ctl.stub.ResumeRollout,
        ctl.stub.AbortRollout,
    ):
        unknown = support.rpc_error(partial(call, ref("ro-nope"), timeout=5))
        assert (unknown.code, unknown.message) == (
            grpc.StatusCode.NOT_FOUND,
            "unknown rollout: ro-nope",
        )
    again = ctl.stub.Deploy(pb.DeployRequest(release=NEWER, fleet=fleet), timeout=5)
    assert again.rollout_id != rid, "a finished rollout frees the fleet"


def test_abort_sends_back_only_the_touched_devices(
    ctl: support.Running, agents: support.Agents, digits_model: TrainedModel
) -> None:
    support.releases(ctl.stub, digits_model.onnx_bytes, "1.0.0", "1.1.0")
    fleet, devs = agents.fleet(ctl, 3, behaviour=lambda release: Outcome(hold=release == NEW))
    strategy = support.strategy(kind="canary", canary="2")
    rid = ctl.stub.Deploy(pb.DeployRequest(release=NEW, fleet=fleet, strategy=strategy)).rollout_id
    support.eventually(lambda: devs[0].held and devs[1].held, what="the canaries' desired states")

    aborted = ctl.stub.AbortRollout(ref(rid), timeout=5)
    info = support.wait_phase(ctl.stub, rid, "rolled_back")

    assert aborted.rollout_phase in (pb.ROLLOUT_PHASE_ROLLING_BACK, pb.ROLLOUT_PHASE_ROLLED_BACK)
    assert info.reason == "aborted by the operator"
    assert [a.generations for a in devs] == [[(2, NEW), (3, OLD)], [(2, NEW), (3, OLD)], []]
    assert list(support.device_states(info).values()) == ["reverted", "reverted", "waiting"]


def test_abort_while_rolling_back_stops_waiting_for_a_silent_device(
    ctl: support.Running, agents: support.Agents, digits_model: TrainedModel
) -> None:
    support.releases(ctl.stub, digits_model.onnx_bytes, "1.0.0", "1.1.0")
    fleet, devs = agents.fleet(ctl, 2, behaviour=lambda _release: Outcome(hold=True))
    strategy = support.strategy(kind="canary", canary="1")
    rid = ctl.stub.Deploy(pb.DeployRequest(release=NEW, fleet=fleet, strategy=strategy)).rollout_id
    support.eventually(lambda: devs[0].held, what="the canary's desired state")

    assert ctl.stub.AbortRollout(ref(rid), timeout=5).rollout_phase == pb.ROLLOUT_PHASE_ROLLING_BACK
    busy = support.rpc_error(lambda: ctl.stub.Deploy(pb.DeployRequest(release=NEW, fleet=fleet)))
    assert busy.code == grpc.StatusCode.FAILED_PRECONDITION, "a rollback under way holds the fleet"
    info = ctl.stub.AbortRollout(ref(rid), timeout=5)

    assert info.rollout_phase == pb.ROLLOUT_PHASE_ROLLED_BACK
    assert f"stopped waiting for {devs[0].device_id} to confirm" in info.reason
    assert devs[0].generations == [(2, NEW), (3, OLD)], "its rollback stays retained"


def test_fleet_rollback_aborts_the_running_rollout_and_skips_devices_with_nowhere_to_go(
    ctl: support.Running, agents: support.Agents, digits_model: TrainedModel
) -> None:
    support.releases(ctl.stub, digits_model.onnx_bytes, "1.0.0", "1.1.0", "1.2.0")
    fleet, devs = agents.fleet(
        ctl, 3, active=NEW, previous=OLD, behaviour=lambda r: Outcome(hold=r == NEWER)
    )
    fresh = support.SimAgent(
        agents.broker_url, f"{fleet}-d3", fleet, support.trust(ctl.stub), active=NEW
    )
    agents.made.append(fresh.connect())
    support.eventually(
        lambda: len(ctl.stub.ListDevices(pb.ListDevicesRequest(fleet=fleet)).devices) == 4
    )
    strategy = support.strategy(kind="canary", canary="1")
    running = ctl.stub.Deploy(pb.DeployRequest(release=NEWER, fleet=fleet, strategy=strategy))
    support.eventually(lambda: devs[0].held, what="the canary's desired state")

    answer = ctl.stub.Rollback(pb.RollbackRequest(fleet=fleet), timeout=5)
    back = support.wait_phase(ctl.stub, answer.rollout_id, "rolled_back")
    aborted = support.wait_phase(ctl.stub, running.rollout_id, "rolled_back")

    assert sorted(x.device_id for x in answer.targets) == [a.device_id for a in devs]
    assert aborted.reason == f"aborted by fleet rollback {answer.rollout_id}"
    assert devs[0].generations == [(2, NEWER), (3, NEW), (4, OLD)]
    assert [a.generations for a in devs[1:]] == [[(2, OLD)], [(2, OLD)]]
    assert fresh.generations == [], "no previous release: left alone"
    skipped = next(d for d in back.devices if d.device_id == fresh.device_id)
    assert (skipped.target_state, skipped.reason) == (
        pb.TARGET_STATE_REVERTED,
        "no previous release",
    )
    listed = ctl.stub.ListRollouts(pb.ListRolloutsRequest(fleet=fleet), timeout=5).rollouts
    assert [(r.rollout_id, r.strategy.strategy_kind) for r in listed] == [
        (answer.rollout_id, pb.STRATEGY_KIND_ROLLBACK),
        (running.rollout_id, pb.STRATEGY_KIND_CANARY),
    ]
    assert back.reason == "fleet rollback to each device's previous release"


def test_fleet_rollback_to_a_named_release_and_its_refusals(
    ctl: support.Running, agents: support.Agents, digits_model: TrainedModel
) -> None:
    support.releases(ctl.stub, digits_model.onnx_bytes, "1.0.0", "1.1.0")
    fleet, devs = agents.fleet(ctl, 2, active=NEW)  # no previous release

    nowhere = support.rpc_error(lambda: ctl.stub.Rollback(pb.RollbackRequest(fleet=fleet)))
    unknown = support.rpc_error(
        lambda: ctl.stub.Rollback(pb.RollbackRequest(fleet=fleet, to_release="digits:9.9.9"))
    )
    no_fleet = support.rpc_error(lambda: ctl.stub.Rollback(pb.RollbackRequest(fleet="nowhere")))
    answer = ctl.stub.Rollback(pb.RollbackRequest(fleet=fleet, to_release=OLD), timeout=5)
    info = support.wait_phase(ctl.stub, answer.rollout_id, "rolled_back")

    assert nowhere.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "no device of fleet" in nowhere.message
    assert (unknown.code, unknown.message) == (
        grpc.StatusCode.NOT_FOUND,
        "unknown release: digits:9.9.9",
    )
    assert (no_fleet.code, no_fleet.message) == (
        grpc.StatusCode.NOT_FOUND,
        "unknown fleet: nowhere",
    )
    assert (info.release, info.strategy.strategy_kind) == (OLD, pb.STRATEGY_KIND_ROLLBACK)
    assert [a.generations for a in devs] == [[(2, OLD)], [(2, OLD)]]
    assert {d.previous_release for d in info.devices} == {OLD}
