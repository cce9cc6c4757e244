"""The shipped Mosquitto ACL, enforced by a real broker: devices only touch their own topics."""

from __future__ import annotations

import queue
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import Broker, mosquitto_available

ROOT = Path(__file__).resolve().parents[2]
USERS = {"edgefleet-controller": "ctl-secret", "dev-a": "a-secret", "dev-b": "b-secret"}


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[Broker]:
    if not mosquitto_available() or shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto and mosquitto_passwd are needed (apt-get install mosquitto)")
    passwd = tmp_path / "passwd"
    passwd.touch(mode=0o600)
    for user, password in USERS.items():
        subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, password], check=True)
    acl = ROOT / "deploy" / "mosquitto" / "edgefleet.acl"
    b = Broker(tmp_path)
    conf = b.conf.read_text().replace("allow_anonymous true", "allow_anonymous false")
    b.conf.write_text(
        f"per_listener_settings false\n{conf}password_file {passwd}\nacl_file {acl}\n"
    )
    b.start()
    yield b
    b.kill()


def client(broker: Broker, user: str, password: str | None = None) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"acl-test-{user}")
    c.username_pw_set(user, USERS[user] if password is None else password)
    return c


def connect(c: mqtt.Client, broker: Broker) -> mqtt.Client:
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    return c


def inbox(c: mqtt.Client) -> queue.Queue[tuple[str, bytes]]:
    q: queue.Queue[tuple[str, bytes]] = queue.Queue()
    c.on_message = lambda _c, _u, m: q.put((m.topic, m.payload))
    return q


def test_device_cannot_publish_as_another_device(acl_broker: Broker) -> None:
    ctl = client(acl_broker, "edgefleet-controller")
    got = inbox(ctl)
    connect(ctl, acl_broker)
    ctl.subscribe("ef/v1/#", qos=1)
    dev_a = connect(client(acl_broker, "dev-a"), acl_broker)
    try:
        sub_ready = ctl.publish("ef/v1/dev/dev-a/status", b"ping", qos=1)  # controller may write
        sub_ready.wait_for_publish(5)
        assert got.get(timeout=5) == ("ef/v1/dev/dev-a/status", b"ping")
        # Forged first, legitimate second, on one connection: delivery keeps order, so when the
        # legitimate message arrives first the forged one was dropped by the broker.
        dev_a.publish("ef/v1/dev/dev-b/status", b"forged", qos=1).wait_for_publish(5)
        dev_a.publish("ef/v1/dev/dev-b/desired", b"forged", qos=1).wait_for_publish(5)
        dev_a.publish("ef/v1/fleet/f/presence/dev-b", b"forged", qos=1).wait_for_publish(5)
        dev_a.publish("ef/v1/dev/dev-a/status", b"mine", qos=1).wait_for_publish(5)
        assert got.get(timeout=5) == ("ef/v1/dev/dev-a/status", b"mine")
        assert got.empty()
    finally:
        for c in (ctl, dev_a):
            c.disconnect()
            c.loop_stop()


def test_device_reads_only_its_own_desired_state(acl_broker: Broker) -> None:
    ctl = connect(client(acl_broker, "edgefleet-controller"), acl_broker)
    dev_a = client(acl_broker, "dev-a")
    got = inbox(dev_a)
    granted: queue.Queue[list[int]] = queue.Queue()
    dev_a.on_subscribe = lambda _c, _u, _mid, codes, _p: granted.put([int(x.value) for x in codes])
    connect(dev_a, acl_broker)
    try:
        dev_a.subscribe([("ef/v1/dev/dev-b/desired", 1), ("ef/v1/dev/dev-a/desired", 1)])
        granted.get(timeout=5)
        ctl.publish("ef/v1/dev/dev-b/desired", b"for-b", qos=1, retain=True).wait_for_publish(5)
        ctl.publish("ef/v1/dev/dev-a/desired", b"for-a", qos=1, retain=True).wait_for_publish(5)
        assert got.get(timeout=5) == ("ef/v1/dev/dev-a/desired", b"for-a")
        assert got.empty()
    finally:
        for c in (ctl, dev_a):
            c.disconnect()
            c.loop_stop()


def test_wrong_password_is_refused(acl_broker: Broker) -> None:
    c = client(acl_broker, "dev-a", password="wrong")
    result: queue.Queue[bool] = queue.Queue()
    c.on_connect = lambda _c, _u, _f, rc, _p: result.put(rc.is_failure)
    connect(c, acl_broker)
    try:
        assert result.get(timeout=5) is True
    finally:
        c.disconnect()
        c.loop_stop()
