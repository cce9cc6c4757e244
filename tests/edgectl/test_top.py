"""``edgectl top`` against a real controller fed device reports over the real broker.

Two devices, each enrolled and on the mTLS broker as its identity, report as agents do (status,
presence, telemetry as protobuf through ``edgefleet.common.wire``): one with a power sensor, one
without. ``top --once`` must show the window's figures (rates are requests / window_s) and "—"
where a device sent none.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest

from edgefleet.common import topics, wire
from edgefleet.common import types as t
from edgefleet.demo.stack import Controller
from edgefleet.edgectl.app import app
from tests.edgectl.conftest import ConnectDevice, Edgectl, one_error_line


@pytest.fixture
def fleet(controller: Controller, enrolled_device: ConnectDevice) -> str:
    """A fleet of two devices (each enrolled, on the mTLS broker as its identity) whose
    telemetry the controller has stored."""
    name = f"top-{uuid.uuid4().hex[:6]}"
    a, b = f"{name}-a", f"{name}-b"
    now = int(time.time() * 1000)
    reports = [
        (a, t.Telemetry(a, "digits:1.0.0", 10.0, 250, 5, 1.25, 3.5, 4.0,
                        power_w=4.2, energy_per_inference_j=0.0168, at_ms=now, refused=30)),
        (b, t.Telemetry(b, "digits:1.0.0", 5.0, 20, 0, 2.0, 7.25, 9.0, at_ms=now)),
    ]  # fmt: skip
    devices = {device_id: enrolled_device(name, device_id) for device_id in (a, b)}
    for device_id, _ in reports:
        status = t.DeviceStatus(
            device_id, name, t.InstallPhase.ACTIVE, active_release="digits:1.0.0", at_ms=now
        )
        presence = t.Presence(device_id, name, online=True, at_ms=now)
        for topic, payload in (
            (topics.status(device_id), wire.status_to_pb(status)),
            (topics.presence(name, device_id), wire.presence_to_pb(presence)),
        ):
            devices[device_id].publish(topic, payload.SerializeToString())
    with controller.client() as client:
        deadline = time.monotonic() + 15
        while len(client.list_devices(name)) < 2:  # telemetry of unknown devices is dropped
            assert time.monotonic() < deadline, "devices never registered"
            time.sleep(0.1)
        for device_id, telemetry in reports:
            data = wire.telemetry_to_pb(telemetry).SerializeToString()
            devices[device_id].publish(topics.telemetry(device_id), data, qos=0)
        while not all(d.HasField("telemetry") for d in client.list_devices(name)):
            assert time.monotonic() < deadline, "telemetry never stored"
            time.sleep(0.1)
    return name


def test_top_once_shows_the_latest_window_of_each_device(edgectl: Edgectl, fleet: str) -> None:
    result = edgectl("top", "--fleet", fleet, "--once", "--json")
    assert result.exit_code == 0, result.stderr
    a, b = json.loads(result.stdout)
    assert a == {
        "device_id": f"{fleet}-a",
        "online": True,
        "release": "digits:1.0.0",
        "phase": "active",
        "p50_ms": 1.25,
        "p95_ms": 3.5,
        "requests_per_s": 25.0,
        "errors_per_s": 0.5,
        "refused_per_s": 3.0,
        "power_w": 4.2,
        "energy_per_inference_mj": pytest.approx(16.8),
    }
    assert (b["requests_per_s"], b["errors_per_s"], b["p95_ms"]) == (4.0, 0.0, 7.25)
    assert b["refused_per_s"] == 0.0
    assert b["power_w"] is None and b["energy_per_inference_mj"] is None


def test_top_once_prints_one_table(edgectl: Edgectl, fleet: str) -> None:
    result = edgectl.runner.invoke(
        app,
        ["--controller", edgectl.address, "top", "--fleet", fleet, "--once"],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.stderr
    rows = [r for r in result.stdout.splitlines() if fleet + "-" in r]
    assert len(rows) == 2
    a, b = (r.replace("│", " ").split() for r in rows)
    assert a == [f"{fleet}-a", "yes", "digits:1.0.0", "active",
                 "1.25", "3.50", "25.0", "0.50", "3.00", "4.20", "16.80"]  # fmt: skip
    assert b == [f"{fleet}-b", "yes", "digits:1.0.0", "active",
                 "2.00", "7.25", "4.0", "0.00", "0.00", "—", "—"]  # fmt: skip


def test_top_of_an_unknown_fleet_is_one_line(edgectl: Edgectl) -> None:
    result = edgectl("top", "--fleet", "no-such-fleet", "--once")
    assert result.exit_code == 1
    assert "unknown fleet: no-such-fleet" in one_error_line(result)
