"""Device messages over a real broker: registration, presence, telemetry, events, bad payloads."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from edgefleet.common import topics, wire
from edgefleet.common import types as t
from edgefleet.common.errors import MalformedMessageError
from edgefleet.controller.config import IngestSettings
from edgefleet.controller.devices import ingest
from edgefleet.v1 import controller_pb2 as pb
from edgefleet.v1 import mqtt_pb2
from tests.conftest import Broker
from tests.controller import support

STATUS = t.DeviceStatus(device_id="dev-1", fleet="lab", phase=t.InstallPhase.ACTIVE)
PRESENCE = t.Presence(device_id="dev-1", fleet="lab", online=True)
EVENT = t.DeviceEvent(device_id="dev-1", kind="activated")
TELEMETRY = t.Telemetry("dev-1", "digits:1.0.0", 10.0, 100, 1, 1.0, 2.0, 3.0)


def _status(**fields: object) -> bytes:
    return wire.status_to_pb(replace(STATUS, **fields)).SerializeToString()  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("topic", "payload", "expected"),
    [
        (topics.status("dev-1"), _status(), STATUS),
        (
            topics.presence("lab", "dev-1"),
            wire.presence_to_pb(PRESENCE).SerializeToString(),
            PRESENCE,
        ),
        (topics.events("dev-1"), wire.event_to_pb(EVENT).SerializeToString(), EVENT),
        (topics.telemetry("dev-1"), wire.telemetry_to_pb(TELEMETRY).SerializeToString(), TELEMETRY),
    ],
)
def test_decode_accepts_each_channel(topic: str, payload: bytes, expected: object) -> None:
    assert ingest.decode(topic, payload) == expected


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        (topics.status("dev-1"), b"\xff\xff\xff", "not a valid protobuf"),
        (topics.status("dev-1"), b"", "without device id"),
        (topics.status("dev-2"), _status(), "on the topic of 'dev-2'"),
        (topics.status("dev-1"), _status(fleet="Bad Fleet"), "invalid fleet name"),
        (
            topics.presence("other", "dev-1"),
            wire.presence_to_pb(PRESENCE).SerializeToString(),
            "topic of fleet 'other'",
        ),
        (
            topics.events("dev-1"),
            mqtt_pb2.DeviceEvent(device_id="dev-1").SerializeToString(),
            "without device id or kind",
        ),
        (
            topics.telemetry("dev-1"),
            mqtt_pb2.Telemetry(device_id="dev-1", p95_ms=-1).SerializeToString(),
            "negative",
        ),
        (topics.desired("dev-1"), b"", "does not read desired"),
        ("ef/v1/elsewhere", b"", "not an EdgeFleet topic"),
    ],
)
def test_decode_refuses_malformed_messages(topic: str, payload: bytes, reason: str) -> None:
    with pytest.raises(MalformedMessageError, match=reason):
        ingest.decode(topic, payload)


def _devices(ctl: support.Running, fleet: str) -> list[pb.DeviceInfo]:
    return list(ctl.stub.ListDevices(pb.ListDevicesRequest(fleet=fleet), timeout=5).devices)


def test_first_status_registers_the_device(ctl: support.Running, device: support.Device) -> None:
    fleet, dev = support.unique("fleet"), support.unique("dev")
    device.status(
        dev,
        fleet,
        labels={"site": "berlin"},
        generation_applied=4,
        active_release="digits:1.0.0",
        phase=t.InstallPhase.ACTIVE,
    )

    [info] = support.eventually(lambda: _devices(ctl, fleet), what="registration")

    assert (info.device_id, info.fleet, dict(info.labels)) == (dev, fleet, {"site": "berlin"})
    assert info.phase == mqtt_pb2.INSTALL_PHASE_ACTIVE
    assert (info.active_release, info.generation_applied, info.generation_desired) == (
        "digits:1.0.0",
        4,
        0,
    )
    assert not info.online and not info.HasField("telemetry")
    assert info.last_seen_ms > 0


def test_presence_telemetry_and_events_show_up(
    ctl: support.Running, device: support.Device
) -> None:
    fleet, dev = support.unique("fleet"), support.unique("dev")
    device.status(dev, fleet)
    support.eventually(lambda: _devices(ctl, fleet), what="registration")
    presence = t.Presence(dev, fleet, online=True, predict_endpoint="127.0.0.1:7000")
    device.publish(
        topics.presence(fleet, dev), wire.presence_to_pb(presence).SerializeToString(), retain=True
    )
    telemetry = replace(TELEMETRY, device_id=dev, power_w=4.5)
    device.publish(topics.telemetry(dev), wire.telemetry_to_pb(telemetry).SerializeToString())
    for i in range(3):
        event = t.DeviceEvent(dev, kind=f"step-{i}", phase=t.InstallPhase.FETCHING, at_ms=i)
        device.publish(topics.events(dev), wire.event_to_pb(event).SerializeToString())

    info = support.eventually(
        lambda: next(
            (d for d in _devices(ctl, fleet) if d.online and d.HasField("telemetry")), None
        ),
        what="presence and telemetry",
    )
    assert info.predict_endpoint == "127.0.0.1:7000"
    assert wire.telemetry_from_pb(info.telemetry) == telemetry

    def fleet_events() -> list[mqtt_pb2.DeviceEvent]:
        return list(ctl.stub.ListEvents(pb.ListEventsRequest(fleet=fleet), timeout=5).events)

    def all_three() -> list[mqtt_pb2.DeviceEvent] | None:
        events = fleet_events()
        return events if len(events) == 3 else None

    events = support.eventually(all_three, what="events")
    assert [e.kind for e in events] == ["step-0", "step-1", "step-2"]  # newest last
    last = ctl.stub.ListEvents(pb.ListEventsRequest(device_id=dev, limit=1), timeout=5).events
    assert [e.kind for e in last] == ["step-2"]
    assert not ctl.stub.ListEvents(pb.ListEventsRequest(fleet="nobody"), timeout=5).events


def test_malformed_messages_are_dropped_counted_and_survived(
    ctl: support.Running, device: support.Device
) -> None:
    fleet, dev = support.unique("fleet"), support.unique("dev")
    # Not retained: later tests' controllers must not meet these.
    device.publish(topics.status(dev), b"\x08\x96\x01garbage")
    device.publish(topics.status(dev), _status(device_id="someone-else", fleet=fleet))
    device.publish(topics.events(dev), mqtt_pb2.DeviceEvent(device_id=dev).SerializeToString())
    device.publish(topics.telemetry(dev), b"\xff\xff", qos=1)

    def count(channel: str) -> float:
        value = ctl.controller.metrics.registry.get_sample_value(
            "edgefleet_controller_malformed_messages_total", {"channel": channel}
        )
        return value or 0.0

    support.eventually(
        lambda: (count("status"), count("events"), count("telemetry")) == (2, 1, 1),
        what="malformed counts",
    )
    device.status(dev, fleet)
    support.eventually(lambda: _devices(ctl, fleet), what="registration after bad messages")


def test_events_are_bounded_per_device(tmp_path: Path, broker: Broker) -> None:
    s = replace(support.settings(tmp_path, broker.url), ingest=IngestSettings(events_per_device=5))
    ctl = support.start(s)
    device = support.Device(broker.url)
    try:
        fleet, dev = support.unique("fleet"), support.unique("dev")
        device.status(dev, fleet)
        for i in range(12):
            event = t.DeviceEvent(dev, kind=f"e{i}")
            device.publish(topics.events(dev), wire.event_to_pb(event).SerializeToString())
        support.eventually(
            lambda: [
                e
                for e in ctl.stub.ListEvents(pb.ListEventsRequest(device_id=dev)).events
                if e.kind == "e11"
            ],
            what="the last event",
        )
        events = ctl.stub.ListEvents(pb.ListEventsRequest(device_id=dev), timeout=5).events
    finally:
        device.close()
        ctl.stop()

    assert [e.kind for e in events] == [f"e{i}" for i in range(7, 12)]
