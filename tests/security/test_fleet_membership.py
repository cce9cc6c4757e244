"""The registry, not the device, owns fleet membership (Trust issue, item 4; Convergence, item 3).

Attacks, each against a real controller and a real Mosquitto: an enrolled device that claims
another fleet in its status or presence (to join that fleet's rollout, pass or abort its canary,
or receive its neighbours' inference as a failover peer), and garbage that names a device id the
registry never heard of (with ``--enrolled-only`` it never registers, so no rollout waits on it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.common import topics, wire
from edgefleet.common import types as t
from edgefleet.controller.config import IngestSettings
from edgefleet.controller.devices.registry import FLEET_REFUSED
from edgefleet.v1 import controller_pb2 as pb
from edgefleet.v1 import mqtt_pb2
from tests.conftest import Broker
from tests.controller import support


def _start(tmp_path: Path, broker: Broker, *, enrolled_only: bool) -> support.Running:
    s = support.settings(tmp_path / "data", broker.url)
    s = dataclasses.replace(s, ingest=IngestSettings(enrolled_only=enrolled_only))
    return support.start(s)


@pytest.fixture
def ctl(tmp_path: Path, broker: Broker) -> Iterator[support.Running]:
    running = _start(tmp_path, broker, enrolled_only=False)
    yield running
    running.stop()


@pytest.fixture
def device(broker: Broker) -> Iterator[support.Device]:
    dev = support.Device(broker.url)
    yield dev
    dev.close()


def _enroll(ctl: support.Running, device_id: str, fleet: str) -> None:
    assert ctl.controller.enrollment is not None
    ctl.controller.enrollment.enroll_device(device_id, fleet=fleet, labels={})


def _fleet_of(ctl: support.Running) -> dict[str, str]:
    return {d.device_id: d.fleet for d in support.all_devices(ctl.stub)}


def _refused(ctl: support.Running, reason: str) -> float:
    value = ctl.controller.metrics.registry.get_sample_value(
        "edgefleet_controller_refused_reports_total", {"reason": reason}
    )
    return value or 0.0


def _events(ctl: support.Running, device_id: str) -> list[mqtt_pb2.DeviceEvent]:
    reply = ctl.stub.ListEvents(pb.ListEventsRequest(device_id=device_id), timeout=5)
    return list(reply.events)


def test_an_enrolled_device_that_claims_another_fleet_stays_in_its_own(
    ctl: support.Running, device: support.Device
) -> None:
    home, other = support.unique("fleet"), support.unique("fleet")
    dev = support.unique("dev")
    _enroll(ctl, dev, home)

    device.status(dev, other, seq=1)  # its very first status already lies
    support.eventually(lambda: _refused(ctl, "wrong_fleet") == 1, what="the refusal")
    assert ctl.controller.ingest.wait_idle(5)
    assert dev not in _fleet_of(ctl)

    device.status(dev, home, seq=2)
    support.eventually(lambda: _fleet_of(ctl).get(dev) == home, what="registration")
    device.status(dev, other, seq=3, generation_applied=7)
    support.eventually(lambda: _refused(ctl, "wrong_fleet") == 2, what="the second refusal")
    assert ctl.controller.ingest.wait_idle(5)

    assert _fleet_of(ctl)[dev] == home
    [info] = ctl.stub.ListDevices(pb.ListDevicesRequest(fleet=home), timeout=5).devices
    assert info.generation_applied == 0, "the refused status changed the device"
    assert not ctl.stub.ListDevices(pb.ListDevicesRequest(fleet=other), timeout=5).devices
    refusals = [e for e in _events(ctl, dev) if e.kind == FLEET_REFUSED]
    assert len(refusals) == 2
    assert refusals[-1].message == (
        f"reported fleet {other!r} but is enrolled in {home!r}; refused"
    )


def test_a_presence_into_another_fleet_is_refused(
    ctl: support.Running, device: support.Device
) -> None:
    """A failover hijack: presence in a fleet the device is not enrolled in (with an endpoint
    its neighbours there would forward their inputs to)."""
    home, other = support.unique("fleet"), support.unique("fleet")
    dev = support.unique("dev")
    _enroll(ctl, dev, home)
    device.status(dev, home)
    support.eventually(lambda: _fleet_of(ctl).get(dev) == home, what="registration")

    forged = t.Presence(dev, other, online=True, predict_endpoint="127.0.0.1:9")
    device.publish(topics.presence(other, dev), wire.presence_to_pb(forged).SerializeToString())
    support.eventually(lambda: _refused(ctl, "wrong_fleet") == 1, what="the refusal")
    assert ctl.controller.ingest.wait_idle(5)

    [info] = ctl.stub.ListDevices(pb.ListDevicesRequest(fleet=home), timeout=5).devices
    assert (info.online, info.predict_endpoint) == (False, "")


def test_an_unenrolled_device_never_registers_with_enrolled_only(
    tmp_path: Path, broker: Broker, device: support.Device
) -> None:
    ctl = _start(tmp_path, broker, enrolled_only=True)
    try:
        fleet = support.unique("fleet")
        known, stranger = support.unique("dev"), support.unique("dev")
        _enroll(ctl, known, fleet)

        device.status(stranger, fleet)
        device.status(known, fleet)  # after the stranger's, on the same connection: in order
        support.eventually(lambda: known in _fleet_of(ctl), what="registration")
        assert ctl.controller.ingest.wait_idle(5)

        # (the broker also replays other tests' retained statuses: refused as well)
        assert _refused(ctl, "not_enrolled") >= 1
        assert _fleet_of(ctl) == {known: fleet}
        assert not _events(ctl, stranger)
    finally:
        ctl.stop()


def test_without_enrolled_only_a_device_registers_by_its_first_status(
    ctl: support.Running, device: support.Device
) -> None:
    """The insecure mode (no broker mTLS, demo): the device's word is all there is."""
    fleet, dev = support.unique("fleet"), support.unique("dev")
    device.status(dev, fleet)
    support.eventually(lambda: _fleet_of(ctl).get(dev) == fleet, what="registration")
    assert _refused(ctl, "not_enrolled") == 0
