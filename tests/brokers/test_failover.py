"""A session given several broker URLs (the nodes of one broker) moves to the next when the one
it is on dies, and round again: with two real Mosquittos standing in for two nodes."""

from __future__ import annotations

import queue
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.common.mqttclient import MqttSession
from tests.conftest import Broker, mosquitto_available

TIMEOUT = 30.0  # paho's reconnect delay grows to a few seconds after failed attempts


@pytest.fixture
def two_brokers(tmp_path: Path) -> Iterator[tuple[Broker, Broker]]:
    if not mosquitto_available():
        pytest.skip("mosquitto is not installed (apt-get install mosquitto; .ci/run does)")
    a, b = Broker(tmp_path), Broker(tmp_path)
    a.start()
    b.start()
    yield a, b
    a.kill()
    b.kill()


def send(broker: Broker, topic: str, payload: bytes) -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sender-{uuid.uuid4().hex[:8]}")
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    try:
        c.publish(topic, payload, qos=1).wait_for_publish(10)
    finally:
        c.disconnect()
        c.loop_stop()


def wait_on(session: MqttSession, broker: Broker) -> None:
    """Until the session is connected to ``broker`` and its subscriptions are granted."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if session.broker.port == broker.port and session.wait_subscribed(0.2):
            return
        time.sleep(0.05)  # still on the old node: paho has not seen it go yet
    raise AssertionError(f"session never got to {broker.url}; it is on {session.broker.redacted()}")


def test_the_session_fails_over_to_the_next_node_and_round_again(
    two_brokers: tuple[Broker, Broker],
) -> None:
    a, b = two_brokers
    topic = f"ef/v1/test/{uuid.uuid4().hex[:8]}"
    inbox: queue.Queue[bytes] = queue.Queue()
    session = MqttSession(
        f"{a.url}, {b.url}",
        client_id=f"failover-{uuid.uuid4().hex[:8]}",
        subscriptions=[(topic, 1)],
        on_message=lambda _t, payload, _r: inbox.put(payload),
    )
    session.start()
    try:
        wait_on(session, a)
        a.kill()
        wait_on(session, b)
        send(b, topic, b"via b")
        assert inbox.get(timeout=TIMEOUT) == b"via b"

        a.start()
        b.kill()
        wait_on(session, a)
        send(a, topic, b"via a")
        assert inbox.get(timeout=TIMEOUT) == b"via a"
    finally:
        session.stop()
