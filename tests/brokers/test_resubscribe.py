"""A subscription the broker refuses is asked for again, with a growing delay, until it is
granted: a real NATS node whose permissions deny the device its desired topic, then allow it
(config reloaded with SIGHUP) while the session stays connected."""

from __future__ import annotations

import queue
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.common import topics
from edgefleet.common.mqttclient import MqttSession
from tests.brokers.nats import Node, nats_binary, probe
from tests.conftest import wait_port

USERS = '{ user: "ctl", password: "ctl-pw" }'


def authorization(device_permissions: str) -> str:
    return (
        f'authorization {{ users: [ {USERS}, {{ user: "dev", password: "dev-pw"'
        f"{device_permissions} }} ] }}"
    )


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    binary = nats_binary()
    if binary is None:
        pytest.skip("nats-server is not installed (apt-get install nats-server)")
    n = Node(tmp_path, "solo", 0)
    n.configure_alone(authorization(""))
    n.start(binary)
    try:
        wait_port(n.mqtt_port, 30)
        deadline = time.monotonic() + 30
        while not probe(n.mqtt_port, user=("ctl", "ctl-pw")):
            assert time.monotonic() < deadline, "the NATS node never took an MQTT client"
            time.sleep(0.5)
        yield n
    finally:
        n.stop()


def test_a_refused_subscription_is_asked_for_again_until_granted(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    device = f"d-{uuid.uuid4().hex[:6]}"
    topic = topics.desired(device)
    subject = topic.replace("/", ".")
    node.configure_alone(
        authorization(f', permissions: {{ subscribe: {{ deny: ["{subject}"] }} }}')
    )
    node.reload()  # returns once the node applied the deny: the first SUBACK refuses
    inbox: queue.Queue[bytes] = queue.Queue()
    connects: list[None] = []
    session = MqttSession(
        f"mqtt://dev:dev-pw@127.0.0.1:{node.mqtt_port}",
        client_id=device,
        subscriptions=[(topic, 1)],
        on_message=lambda _t, payload, _r: inbox.put(payload),
        on_connect=lambda: connects.append(None),
    )
    sender = MqttSession(f"mqtt://ctl:ctl-pw@127.0.0.1:{node.mqtt_port}", client_id=f"ctl-{device}")
    session.start()
    sender.start()
    try:
        assert session.wait_subscribed(30) and session.connected
        refusals = [r for r in caplog.records if "refused subscriptions" in r.getMessage()]
        assert refusals, "the broker granted the denied subscription: nothing was tested"
        assert sender.wait_connected(30)
        sender.publish(topic, b"before", qos=1).wait_for_publish(10)
        node.configure_alone(authorization(""))  # the operator fixes the permissions
        node.reload()
        deadline = time.monotonic() + 60
        got = b""
        while got != b"after" and time.monotonic() < deadline:
            sender.publish(topic, b"after", qos=1)
            try:
                got = inbox.get(timeout=1.0)
            except queue.Empty:
                continue
        assert got == b"after", "the refused subscription was never granted"
        assert len(connects) == 1  # asked again on the same connection, not by reconnecting
    finally:
        session.stop()
        sender.stop()
