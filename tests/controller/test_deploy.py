"""Deploy: signed, retained desired states per device, generations that only grow, restarts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import grpc

from edgefleet.common import desired, topics
from edgefleet.common import types as t
from edgefleet.demo.digits import TrainedModel
from edgefleet.v1 import controller_pb2 as pb
from tests.conftest import Broker
from tests.controller import support


def _release(ctl: support.Running, model: TrainedModel, version: str) -> None:
    ctl.stub.InitKey(pb.InitKeyRequest(), timeout=5)
    support.upload(ctl.stub, "digits", model.onnx_bytes)
    ctl.stub.CreateRelease(pb.CreateReleaseRequest(name="digits", version=version), timeout=5)


def _register(ctl: support.Running, device: support.Device, fleet: str, *ids: str) -> None:
    for dev in ids:
        device.status(dev, fleet)
    support.eventually(
        lambda: len(ctl.stub.ListDevices(pb.ListDevicesRequest(fleet=fleet)).devices) == len(ids),
        what="registration",
    )


def test_deploy_of_an_unknown_release_or_to_an_unknown_fleet_is_not_found(
    ctl: support.Running, device: support.Device, digits_model: TrainedModel
) -> None:
    _release(ctl, digits_model, "1.0.0")
    fleet = support.unique("fleet")
    _register(ctl, device, fleet, support.unique("dev"))

    no_fleet = support.rpc_error(
        lambda: ctl.stub.Deploy(pb.DeployRequest(release="digits:1.0.0", fleet="nowhere"))
    )
    no_release = support.rpc_error(
        lambda: ctl.stub.Deploy(pb.DeployRequest(release="digits:9.9.9", fleet=fleet))
    )
    bad_ref = support.rpc_error(
        lambda: ctl.stub.Deploy(pb.DeployRequest(release="digits", fleet=fleet))
    )

    assert (no_fleet.code, no_fleet.details()) == (
        grpc.StatusCode.NOT_FOUND,
        "unknown fleet: nowhere",
    )
    assert (no_release.code, no_release.details()) == (
        grpc.StatusCode.NOT_FOUND,
        "unknown release: digits:9.9.9",
    )
    assert bad_ref.code == grpc.StatusCode.INVALID_ARGUMENT


def test_deploy_publishes_signed_retained_desired_states_with_growing_generations(
    ctl: support.Running,
    device: support.Device,
    digits_model: TrainedModel,
    digits_model_v2: TrainedModel,
    broker: Broker,
) -> None:
    _release(ctl, digits_model, "1.0.0")
    _release(ctl, digits_model_v2, "1.1.0")
    fleet = support.unique("fleet")
    ids = sorted([support.unique("dev"), support.unique("dev")])
    _register(ctl, device, fleet, *ids)
    for dev in ids:
        device.subscribe(topics.desired(dev))
    trust = support.trust(ctl.stub)

    seen: dict[str, list[int]] = {dev: [] for dev in ids}
    for version in ("1.0.0", "1.1.0"):
        answer = ctl.stub.Deploy(
            pb.DeployRequest(release=f"digits:{version}", fleet=fleet), timeout=5
        )
        assert answer.rollout_id
        assert sorted(x.device_id for x in answer.targets) == ids
        for _ in ids:
            msg = device.next_message()
            dev = msg.topic.split("/")[3]
            state = desired.open_desired(bytes(msg.payload), trust, device_id=dev)
            assert str(state.release) == f"digits:{version}"
            assert (state.fleet, state.rollout_id) == (fleet, answer.rollout_id)
            assert state.artifact_sources == (ctl.address,)
            assert state.manifest.model_digest.startswith("sha256:")
            seen[dev].append(state.generation)
            device.status(  # it applied it (a fleet takes one rollout at a time)
                dev,
                fleet,
                phase=t.InstallPhase.ACTIVE,
                active_release=str(state.release),
                generation_applied=state.generation,
            )
        support.wait_phase(ctl.stub, answer.rollout_id, "succeeded")
    assert seen == {dev: [1, 2] for dev in ids}

    late = support.Device(broker.url)  # a device that connects later gets the retained state
    try:
        late.subscribe(topics.desired(ids[0]))
        msg = late.next_message()
    finally:
        late.close()
    assert msg.retain
    assert desired.open_desired(bytes(msg.payload), trust, device_id=ids[0]).generation == 2
    infos = ctl.stub.ListDevices(pb.ListDevicesRequest(fleet=fleet), timeout=5).devices
    assert [(d.generation_desired, d.target_release) for d in infos] == [(2, "digits:1.1.0")] * 2


def test_a_restart_keeps_devices_keys_releases_and_generations(
    tmp_path: Path, broker: Broker, device: support.Device, digits_model: TrainedModel
) -> None:
    settings = support.settings(tmp_path, broker.url)
    fleet, dev = support.unique("fleet"), support.unique("dev")
    first = support.start(settings)
    try:
        _release(first, digits_model, "1.0.0")
        _register(first, device, fleet, dev)
        before = first.stub.Deploy(pb.DeployRequest(release="digits:1.0.0", fleet=fleet), timeout=5)
        keys_before = first.stub.ListKeys(pb.ListKeysRequest(), timeout=5)
    finally:
        first.stop()
    # Clear the retained status, so only the database can remember the device.
    device.publish(topics.status(dev), b"", retain=True)

    second = support.start(settings)
    try:
        infos = second.stub.ListDevices(pb.ListDevicesRequest(fleet=fleet), timeout=5).devices
        # the device never answered: stop the first rollout (one rollout per fleet at a time)
        second.stub.AbortRollout(pb.RolloutRef(rollout_id=before.rollout_id), timeout=5)
        after = second.stub.Deploy(pb.DeployRequest(release="digits:1.0.0", fleet=fleet), timeout=5)
        keys_after = second.stub.ListKeys(pb.ListKeysRequest(), timeout=5)
    finally:
        second.stop()

    assert [(d.device_id, d.generation_desired) for d in infos] == [(dev, 1)]
    assert [x.generation for x in before.targets] == [1]
    assert [x.generation for x in after.targets] == [2]
    assert after.rollout_id != before.rollout_id
    assert keys_after == keys_before


def test_deploy_while_the_broker_is_down_is_unavailable(
    tmp_path: Path, own_broker: Broker, digits_model: TrainedModel
) -> None:
    ctl = support.start(support.settings(tmp_path, own_broker.url))
    device = support.Device(own_broker.url)
    try:
        _release(ctl, digits_model, "1.0.0")
        fleet = support.unique("fleet")
        _register(ctl, device, fleet, support.unique("dev"))
        own_broker.kill()
        support.eventually(lambda: not ctl.controller.mqtt.connected, what="disconnect")

        err = support.rpc_error(
            lambda: ctl.stub.Deploy(pb.DeployRequest(release="digits:1.0.0", fleet=fleet))
        )
    finally:
        device.close()
        ctl.stop()

    assert (err.code, err.details()) == (
        grpc.StatusCode.UNAVAILABLE,
        "MQTT broker not connected",
    )


def test_extra_artifact_sources_come_first_in_desired_states(
    tmp_path: Path, broker: Broker, device: support.Device, digits_model: TrainedModel
) -> None:
    base = support.settings(tmp_path, broker.url)
    registry = "oci://127.0.0.1:5000/edgefleet/digits"
    s = dataclasses.replace(base, grpc=dataclasses.replace(base.grpc, extra_sources=(registry,)))
    ctl = support.start(s)
    try:
        _release(ctl, digits_model, "1.0.0")
        fleet, dev = support.unique("fleet"), support.unique("dev")
        _register(ctl, device, fleet, dev)
        device.subscribe(topics.desired(dev))
        ctl.stub.Deploy(pb.DeployRequest(release="digits:1.0.0", fleet=fleet), timeout=5)
        msg = device.next_message()
        state = desired.open_desired(bytes(msg.payload), support.trust(ctl.stub), device_id=dev)
        assert state.artifact_sources == (registry, ctl.address)
    finally:
        ctl.stop()
