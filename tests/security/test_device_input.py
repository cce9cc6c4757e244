"""Attacks by a device on what it sends: each bogus message, published over a real Mosquitto to
a real controller (in-process, real gRPC and SQLite), is dropped and counted and changes
nothing; what a device may say reaches the operator's terminal as text, never as markup.

One device reporting ``generation_applied = 2**63-1`` used to make every deploy to its fleet
fail (the next generation overflows a 64-bit column); strings of any length, with control
characters and ANSI escapes, and endpoints that are no ``HOST:PORT`` used to be stored as sent.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgefleet.agent import config as agent_config
from edgefleet.common import topics
from edgefleet.common import types as t
from edgefleet.common.errors import InvalidInputError
from edgefleet.demo.digits import TrainedModel
from edgefleet.edgectl import output, shell
from edgefleet.edgectl.app import app
from edgefleet.v1 import controller_pb2 as pb
from edgefleet.v1 import mqtt_pb2
from tests.conftest import Broker
from tests.controller import support

ACTIVE = mqtt_pb2.INSTALL_PHASE_ACTIVE


@pytest.fixture
def ctl(tmp_path: Path, broker: Broker) -> Iterator[support.Running]:
    running = support.start(support.settings(tmp_path / "data", broker.url))
    yield running
    running.stop()


@pytest.fixture
def device(broker: Broker) -> Iterator[support.Device]:
    dev = support.Device(broker.url)
    yield dev
    dev.close()


def _malformed(ctl: support.Running, channel: str) -> float:
    value = ctl.controller.metrics.registry.get_sample_value(
        "edgefleet_controller_malformed_messages_total", {"channel": channel}
    )
    return value or 0.0


def _devices(ctl: support.Running, fleet: str) -> list[pb.DeviceInfo]:
    return list(ctl.stub.ListDevices(pb.ListDevicesRequest(fleet=fleet), timeout=5).devices)


def _register(ctl: support.Running, device: support.Device, fleet: str, *ids: str) -> None:
    for dev in ids:
        device.status(dev, fleet)
    support.eventually(lambda: len(_devices(ctl, fleet)) == len(ids), what="registration")


def _refused(ctl: support.Running, channel: str, before: float) -> None:
    """The controller counted one more malformed message on ``channel`` and wrote nothing."""
    support.eventually(
        lambda: _malformed(ctl, channel) == before + 1, what=f"a malformed {channel} message"
    )
    assert ctl.controller.ingest.wait_idle(5)


def test_an_overflowing_generation_is_dropped_and_the_fleet_still_deploys(
    ctl: support.Running, device: support.Device, digits_model: TrainedModel
) -> None:
    ctl.stub.InitKey(pb.InitKeyRequest(), timeout=5)
    support.upload(ctl.stub, "digits", digits_model.onnx_bytes)
    ctl.stub.CreateRelease(pb.CreateReleaseRequest(name="digits", version="1.0.0"), timeout=5)
    fleet, honest, liar = support.unique("fleet"), support.unique("dev"), support.unique("dev")
    _register(ctl, device, fleet, honest, liar)
    before = _malformed(ctl, "status")

    lie = mqtt_pb2.DeviceStatus(
        device_id=liar, fleet=fleet, phase=ACTIVE, generation_applied=2**63 - 1
    )
    device.publish(topics.status(liar), lie.SerializeToString())
    _refused(ctl, "status", before)
    reply = ctl.stub.Deploy(pb.DeployRequest(release="digits:1.0.0", fleet=fleet), timeout=30)

    assert sorted(x.device_id for x in reply.targets) == sorted([honest, liar])
    assert all(0 < x.generation < 2**62 for x in reply.targets)
    assert {d.device_id: d.generation_applied for d in _devices(ctl, fleet)} == {
        honest: 0,
        liar: 0,
    }


BAD_STATUSES = {
    "huge last_error": {"last_error": "x" * 3000},
    "ANSI in last_error": {"last_error": "\x1b[2J\x1b[31mall good"},
    "bidi override in a release": {"active_release": "digits:1.0.0\u202e"},
    "huge release": {"active_release": "r" * 10_000},
    "NUL in agent version": {"agent_version": "1.0\x00"},
    "a hundred labels": {"labels": {f"k{i}": "v" for i in range(100)}},
    "huge label": {"labels": {"site": "s" * 1000}},
    "endpoint with a path": {"predict_endpoint": "evil.example:80/steal"},
    "endpoint with a scheme": {"predict_endpoint": "http://10.0.0.1:80"},
    "endpoint port out of range": {"predict_endpoint": "10.0.0.1:99999"},
    "endpoint with a space": {"predict_endpoint": "a b:50051"},
    "not a digest": {"active_manifest_digest": "../../etc/passwd"},
    "seq past 2**62": {"seq": 2**64 - 1},
}


@pytest.mark.parametrize("fields", BAD_STATUSES.values(), ids=BAD_STATUSES.keys())
def test_a_bogus_status_is_dropped_and_changes_nothing(
    ctl: support.Running, device: support.Device, fields: dict[str, object]
) -> None:
    fleet, dev = support.unique("fleet"), support.unique("dev")
    _register(ctl, device, fleet, dev)
    [registered] = _devices(ctl, fleet)
    before = _malformed(ctl, "status")

    bogus = mqtt_pb2.DeviceStatus(device_id=dev, fleet=fleet, phase=ACTIVE, **fields)  # type: ignore[arg-type]
    device.publish(topics.status(dev), bogus.SerializeToString())
    _refused(ctl, "status", before)

    [after] = _devices(ctl, fleet)
    registered.ClearField("last_seen_ms")
    after.ClearField("last_seen_ms")
    assert after == registered


BAD_EVENTS = {
    "huge message": {"kind": "activated", "message": "m" * 5000},
    "markup as kind": {"kind": "[bold]activated"},
    "escape in message": {"kind": "activated", "message": "\x1b]0;owned\x07"},
    "generation past 2**62": {"kind": "activated", "generation": 2**62 + 1},
    "seq past 2**62": {"kind": "activated", "seq": 2**63},
}


@pytest.mark.parametrize("fields", BAD_EVENTS.values(), ids=BAD_EVENTS.keys())
def test_a_bogus_event_is_dropped(
    ctl: support.Running, device: support.Device, fields: dict[str, object]
) -> None:
    fleet, dev = support.unique("fleet"), support.unique("dev")
    _register(ctl, device, fleet, dev)
    before = _malformed(ctl, "events")

    bogus = mqtt_pb2.DeviceEvent(device_id=dev, **fields)  # type: ignore[arg-type]
    device.publish(topics.events(dev), bogus.SerializeToString())
    _refused(ctl, "events", before)

    assert not ctl.stub.ListEvents(pb.ListEventsRequest(device_id=dev), timeout=5).events


BAD_TELEMETRY = {
    "infinite p95": {"p95_ms": math.inf},
    "negative power": {"power_w": -3.0},
    "NaN energy": {"energy_per_inference_j": math.nan},
    "request count past 2**62": {"requests": 2**64 - 1},
}


@pytest.mark.parametrize("fields", BAD_TELEMETRY.values(), ids=BAD_TELEMETRY.keys())
def test_bogus_telemetry_is_dropped(
    ctl: support.Running, device: support.Device, fields: dict[str, object]
) -> None:
    fleet, dev = support.unique("fleet"), support.unique("dev")
    _register(ctl, device, fleet, dev)
    before = _malformed(ctl, "telemetry")

    bogus = mqtt_pb2.Telemetry(device_id=dev, release="digits:1.0.0", window_s=10, **fields)  # type: ignore[arg-type]
    device.publish(topics.telemetry(dev), bogus.SerializeToString(), qos=1)
    _refused(ctl, "telemetry", before)

    [info] = _devices(ctl, fleet)
    assert not info.HasField("telemetry")


def test_a_presence_with_a_bogus_endpoint_is_dropped(
    ctl: support.Running, device: support.Device
) -> None:
    fleet, dev = support.unique("fleet"), support.unique("dev")
    _register(ctl, device, fleet, dev)
    before = _malformed(ctl, "presence")

    bogus = mqtt_pb2.Presence(
        device_id=dev, fleet=fleet, online=True, predict_endpoint="attacker.example:1;rm -rf"
    )
    device.publish(topics.presence(fleet, dev), bogus.SerializeToString())
    _refused(ctl, "presence", before)

    [info] = _devices(ctl, fleet)
    assert (info.online, info.predict_endpoint) == (False, "")


def test_markup_from_a_device_prints_as_text(ctl: support.Running, device: support.Device) -> None:
    fleet, dev = support.unique("fleet"), support.unique("dev")
    error = "[/] [bold red]ALL DEVICES COMPROMISED[/]"
    device.status(dev, fleet, last_error=error, phase=t.InstallPhase.FAILED)
    event = mqtt_pb2.DeviceEvent(device_id=dev, kind="install_failed", message=f"boom {error}")
    device.publish(topics.events(dev), event.SerializeToString())
    support.eventually(
        lambda: ctl.stub.ListEvents(pb.ListEventsRequest(device_id=dev), timeout=5).events,
        what="the event",
    )
    # an operator's edgectl on the operator API; wide enough that no cell folds
    runner = CliRunner(env={"COLUMNS": "400", "EDGECTL_TOKEN": ctl.token})

    listed = runner.invoke(app, ["--controller", ctl.api, "devices", "list", "-f", fleet])
    events = runner.invoke(app, ["--controller", ctl.api, "events", "--device", dev])

    assert listed.exit_code == 0, listed.output
    assert events.exit_code == 0, events.output
    assert error in " ".join(listed.stdout.split())
    assert f"boom {error}" in " ".join(events.stdout.split())


@pytest.mark.parametrize(
    ("sent", "shown"),
    [
        ("\x1b[2J\x1b[31mred\x1b[0m text", "red text"),
        ("title\x1b]0;owned\x07 set", "title set"),
        ("bell\x07 and\rreturn", "bell  and return"),
        ("8-bit \x9b31mcsi", "8-bit csi"),
        ("rtl \u202eexe.txt", "rtl  exe.txt"),
    ],
)
def test_what_is_already_stored_prints_without_escapes(sent: str, shown: str) -> None:
    # strings stored before devices were checked, or quoted in a rollout reason, still print
    # as plain text: no escape sequence reaches the terminal
    assert output.plain(sent) == shown
    assert output.safe(f"[/]{sent}") == f"\\[/]{shown}"
    assert shell.one_line(f"error:\n{sent}") == " ".join(f"error: {shown}".split())


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        ({f"k{i}": "v" for i in range(33)}, "33 labels"),
        ({"site": "s" * 300}, "300 bytes"),
        ({"site": "a\x1b[31mb"}, "control character"),
    ],
)
def test_an_agent_refuses_labels_the_controller_would_drop(
    tmp_path: Path, labels: dict[str, str], match: str
) -> None:
    # else every status it sends would be dropped as malformed, and it would never register
    key = tmp_path / "trusted.pem"
    key.write_text("read when the agent starts")
    flags = {"device_id": "dev-1", "trusted_keys": [key], "labels": labels}
    with pytest.raises(InvalidInputError, match=match):
        agent_config.load(file=None, env={}, flags=flags)
