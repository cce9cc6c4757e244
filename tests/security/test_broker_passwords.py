"""Attack: client-id takeover on the shipped password-based Mosquitto config.

A real Mosquitto run with the directives of ``deploy/mosquitto/mosquitto.conf`` (its listeners,
certificate and persistence paths replaced by the test's own) and the shipped
``deploy/mosquitto/edgefleet.acl``, clients logging in with passwords. The ACL binds topics to
the username, but MQTT sessions are keyed by client id: before, a device with its own valid
password connecting under another device's client id, or the controller's, took that session
over and kicked its owner off the broker (over and over, if it liked). The shipped config now
makes each client's id its username (``use_username_as_clientid``), so a second connection
under someone else's id is only ever a second session of the intruder's own. The mTLS config
``edge-controller broker-config`` writes does the same with the certificate's CN
(``tests/security/test_broker_mtls.py``).
"""

from __future__ import annotations

import queue
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.common import topics
from tests.conftest import Broker, mosquitto_available

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "deploy" / "mosquitto" / "mosquitto.conf"
ACL = ROOT / "deploy" / "mosquitto" / "edgefleet.acl"
CONTROLLER = "edgefleet-controller"
USERS = {CONTROLLER: "ctl-secret", "dev-a": "a-secret", "dev-b": "b-secret"}
REPLACED = ("listener", "cafile", "certfile", "keyfile", "tls_version", "password_file",
            "acl_file", "persistence", "persistence_location", "autosave_interval")  # fmt: skip
TIMEOUT = 10.0


def shipped_directives() -> list[str]:
    """The shipped config's directives less those naming its host's ports and paths."""
    lines = [x.strip() for x in SHIPPED.read_text().splitlines()]
    return [x for x in lines if x and not x.startswith("#") and x.split()[0] not in REPLACED]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Broker]:
    if not mosquitto_available() or shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto and mosquitto_passwd are needed (apt-get install mosquitto)")
    passwd = tmp_path / "passwd"
    passwd.touch(mode=0o600)
    for user, password in USERS.items():
        subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, password], check=True)
    b = Broker(tmp_path)
    # the test's listener first: the shipped listener options then apply to it
    base = [x for x in b.conf.read_text().splitlines() if not x.startswith("allow_anonymous")]
    files = [f"password_file {passwd}", f"acl_file {ACL}", ""]
    b.conf.write_text(
        "\n".join(["per_listener_settings false", *base, *shipped_directives(), *files])
    )
    b.start()
    yield b
    b.kill()


class Conn:
    """A logged-in paho client (persistent session) recording what it gets and its drops."""

    def __init__(self, broker: Broker, user: str, client_id: str) -> None:
        self.inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.connected: queue.Queue[bool] = queue.Queue()
        self.disconnects = 0
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False
        )
        self.client.username_pw_set(user, USERS[user])
        self.client.reconnect_delay_set(60, 60)  # a kicked client stays off for the test
        self.client.on_message = lambda _c, _u, m: self.inbox.put((m.topic, bytes(m.payload)))
        self.client.on_connect = lambda _c, _u, _f, rc, _p: self.connected.put(not rc.is_failure)
        self.client.on_disconnect = self._gone
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        assert self.connected.get(timeout=TIMEOUT), f"{user} could not log in"

    def _gone(self, *_args: object) -> None:
        self.disconnects += 1

    def subscribe(self, topic: str) -> None:
        done: queue.Queue[int] = queue.Queue()
        self.client.on_subscribe = lambda *_a: done.put(1)
        self.client.subscribe(topic, qos=1)
        done.get(timeout=TIMEOUT)

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(TIMEOUT)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def connect(site: Broker) -> Iterator[Callable[[str, str], Conn]]:
    opened: list[Conn] = []

    def make(user: str, client_id: str) -> Conn:
        opened.append(Conn(site, user, client_id))
        return opened[-1]

    yield make
    for c in opened:
        c.close()


def test_the_shipped_config_binds_the_client_id_to_the_username_on_every_listener() -> None:
    blocks: list[list[str]] = []  # each listener's directives, up to the next listener
    for line in SHIPPED.read_text().splitlines():
        if line.startswith("listener "):
            blocks.append([])
        elif blocks and line and not line.startswith("#"):
            blocks[-1].append(line.strip())
    assert len(blocks) == 2
    assert all("use_username_as_clientid true" in b for b in blocks)
    assert "allow_anonymous false" in shipped_directives()


def test_client_id_takeover_is_impossible(connect: Callable[[str, str], Conn]) -> None:
    ctl = connect(CONTROLLER, CONTROLLER)
    ctl.subscribe("ef/v1/dev/+/status")
    dev_a = connect("dev-a", "dev-a")
    # dev-b, with its own good password, asks for dev-a's client id, then the controller's.
    intruders = [connect("dev-b", "dev-a"), connect("dev-b", CONTROLLER)]
    # Both victims still hold their connection: dev-a's QoS 1 publish goes through on it and
    # reaches the controller on its own, and neither was cut off.
    dev_a.publish(topics.status("dev-a"), b"still-here")
    assert ctl.inbox.get(timeout=TIMEOUT) == (topics.status("dev-a"), b"still-here")
    assert dev_a.disconnects == 0 and ctl.disconnects == 0
    # The intruders are dev-b (the ACL by username): nothing of dev-a's or the controller's.
    intruders[1].publish(topics.status("dev-a"), b"forged")
    intruders[1].publish(topics.status("dev-b"), b"own")
    assert ctl.inbox.get(timeout=TIMEOUT) == (topics.status("dev-b"), b"own")
