"""Convergence that survives the broker (issue: nothing depends on a retained message surviving).

Against a real controller and a real Mosquitto of the test's own (persistence off, as
Mosquitto ships): the controller re-publishes every desired state when it reconnects, re-sends
to devices that lag, keeps the newest status by the device's ``seq``, stores a redelivered
event once, and never serves a corrupt blob.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.common import desired, digests, topics, wire
from edgefleet.common import types as t
from edgefleet.common.artifacts import fetch
from edgefleet.common.errors import FetchError
from edgefleet.controller.config import RolloutSettings
from edgefleet.demo.digits import TrainedModel
from edgefleet.v1 import controller_pb2 as pb
from tests.conftest import Broker, mosquitto_available
from tests.controller import support


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Broker]:
    if not mosquitto_available():
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    b = Broker(tmp_path)
    b.start()
    yield b
    b.kill()


def _controller(tmp_path: Path, broker: Broker, **rollouts: float) -> support.Running:
    s = support.settings(tmp_path / "data", broker.url)
    s = dataclasses.replace(
        s,
        rollouts=RolloutSettings(tick_s=0.05, **rollouts),  # type: ignore[arg-type]
    )
    return support.start(s)


def _release(ctl: support.Running, model: TrainedModel, *versions: str) -> None:
    support.releases(ctl.stub, model.onnx_bytes, *versions)


def _register(ctl: support.Running, device: support.Device, fleet: str, *ids: str) -> None:
    for dev in ids:
        device.status(dev, fleet)
    support.eventually(
        lambda: len(ctl.stub.ListDevices(pb.ListDevicesRequest(fleet=fleet)).devices) == len(ids),
        what="registration",
    )


def _devices(ctl: support.Running, fleet: str) -> dict[str, pb.DeviceInfo]:
    listed = ctl.stub.ListDevices(pb.ListDevicesRequest(fleet=fleet), timeout=5).devices
    return {d.device_id: d for d in listed}


def _desired(device: support.Device, device_id: str, ctl: support.Running) -> t.DesiredState:
    msg = device.next_message()
    assert msg.topic == topics.desired(device_id)
    return desired.open_desired(bytes(msg.payload), support.trust(ctl.stub), device_id=device_id)


def test_desired_states_are_published_again_after_the_broker_lost_them(
    tmp_path: Path, own_broker: Broker, digits_model: TrainedModel
) -> None:
    ctl = _controller(tmp_path, own_broker)
    device = support.Device(own_broker.url)
    try:
        _release(ctl, digits_model, "1.0.0")
        fleet, dev = support.unique("fleet"), support.unique("dev")
        _register(ctl, device, fleet, dev)
        ctl.stub.Deploy(pb.DeployRequest(release="digits:1.0.0", fleet=fleet), timeout=5)
        device.close()

        own_broker.kill()  # persistence off: every retained message is gone
        own_broker.start()
        support.eventually(lambda: ctl.controller.mqtt.connected, what="controller reconnected")

        # A device that subscribes only now, to a broker that kept nothing, still gets it.
        device = support.Device(own_broker.url)
        device.subscribe(topics.desired(dev))
        state = _desired(device, dev, ctl)
        assert (state.generation, str(state.release)) == (1, "digits:1.0.0")
    finally:
        device.close()
        ctl.stop()


def test_a_device_that_lags_its_desired_generation_is_sent_it_again(
    tmp_path: Path, own_broker: Broker, digits_model: TrainedModel
) -> None:
    ctl = _controller(tmp_path, own_broker, resend_after_s=0.2, lag_check_s=0.1)
    device = support.Device(own_broker.url)
    try:
        _release(ctl, digits_model, "1.0.0")
        fleet, dev = support.unique("fleet"), support.unique("dev")
        _register(ctl, device, fleet, dev)
        device.subscribe(topics.desired(dev))
        ctl.stub.Deploy(pb.DeployRequest(release="digits:1.0.0", fleet=fleet), timeout=5)
        first = _desired(device, dev, ctl)
        # The device never reports generation 1: the controller sends it again, same generation.
        again = _desired(device, dev, ctl)
        assert again.generation == first.generation == 1
        assert again.release == first.release
    finally:
        device.close()
        ctl.stop()


def test_an_older_status_redelivered_late_changes_nothing(
    ctl: support.Running, device: support.Device
) -> None:
    fleet, dev = support.unique("fleet"), support.unique("dev")
    device.status(dev, fleet, seq=10, active_release="digits:1.1.0", generation_applied=2)
    support.eventually(lambda: dev in _devices(ctl, fleet), what="registration")
    device.status(dev, fleet, seq=9, active_release="digits:1.0.0", generation_applied=1)
    device.status(dev, fleet, seq=10, active_release="digits:0.9.0", generation_applied=1)
    # A newer one after them proves they were handled (in order, one connection).
    device.status(dev, fleet, seq=11, active_release="digits:1.1.0", last_error="fresh")
    support.eventually(lambda: _devices(ctl, fleet)[dev].last_error == "fresh", what="seq 11")
    shown = _devices(ctl, fleet)[dev]
    assert shown.active_release == "digits:1.1.0"


def test_an_event_delivered_twice_is_stored_once(
    ctl: support.Running, device: support.Device
) -> None:
    fleet, dev = support.unique("fleet"), support.unique("dev")
    device.status(dev, fleet)
    event = t.DeviceEvent(device_id=dev, kind="activated", message="once", seq=7, at_ms=1234)
    payload = wire.event_to_pb(event).SerializeToString()
    device.publish(topics.events(dev), payload)
    device.publish(topics.events(dev), payload)  # at least once: the outbox re-sent it
    later = dataclasses.replace(event, kind="health_window_passed", message="later", seq=8)
    device.publish(topics.events(dev), wire.event_to_pb(later).SerializeToString())

    def listed() -> list[pb.DeviceEvent] | None:
        got = list(ctl.stub.ListEvents(pb.ListEventsRequest(device_id=dev), timeout=5).events)
        return got if any(e.message == "later" for e in got) else None

    assert [e.message for e in support.eventually(listed, what="events")] == ["once", "later"]


def test_a_corrupt_blob_in_the_store_is_never_served(
    tmp_path: Path, ctl: support.Running, digits_model: TrainedModel
) -> None:
    model = support.upload(ctl.stub, "digits", digits_model.onnx_bytes)
    path = ctl.controller.settings.blobs_dir / "sha256" / digests.hex_part(model.digest)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))

    with pytest.raises(FetchError, match="corrupt"):
        fetch(ctl.address, model.digest, tmp_path / "partial")
    assert not path.exists(), "the corrupt blob stays in the store"
    assert list((ctl.controller.settings.blobs_dir / "corrupt").iterdir())
    counted = ctl.controller.metrics.registry.get_sample_value(
        "edgefleet_controller_corrupt_blobs_total"
    )
    assert counted == 1.0
    # The partial file holds none of the corrupt bytes.
    assert not (tmp_path / "partial").exists() or (tmp_path / "partial").stat().st_size == 0


def test_an_intact_blob_is_served_and_checked_once(
    tmp_path: Path, ctl: support.Running, digits_model: TrainedModel
) -> None:
    model = support.upload(ctl.stub, "digits", digits_model.onnx_bytes)
    for i in range(2):
        total = fetch(ctl.address, model.digest, tmp_path / f"copy{i}")
        assert total == len(digits_model.onnx_bytes)
        assert digests.of_file(tmp_path / f"copy{i}") == model.digest
