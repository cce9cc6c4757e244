"""Attack: devices on a broker run with the config `edge-controller broker-config` generates.

A real Mosquitto, started with the generated mosquitto.conf, ACL, server certificate and CRL;
devices enrolled for real (a key made here, a CSR, a certificate from the fleet CA): a device
publishes its own status and reads its own desired state, and cannot publish another device's
status, another fleet's presence, or take over another device's (or the controller's) client
id; a revoked device, a client without a certificate and one with a certificate from another
CA cannot connect at all; a payload over the size limit is dropped on every topic.
"""

from __future__ import annotations

import datetime as dt
import os
import queue
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.common import identities, topics
from edgefleet.common.mqttclient import MqttSession
from edgefleet.controller import brokerconfig
from edgefleet.controller.config import PkiSettings
from edgefleet.controller.db import Database
from edgefleet.controller.enrollment import Enrollment, open_enrollment
from edgefleet.controller.pki import CertificateAuthority
from tests.conftest import Broker, mosquitto_available

CONTROLLER = identities.CONTROLLER_IDENTITY
TIMEOUT = 10.0


@dataclass(frozen=True)
class Creds:
    name: str
    cert: Path
    key: Path


class Site:
    """A registry, its CA, enrolled devices' credentials and a broker run from broker-config."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.db = Database(f"sqlite:///{root / 'controller.db'}")
        self.db.create_schema()
        self.enrollment: Enrollment = open_enrollment(
            self.db,
            PkiSettings(),
            ca_dir=root / "ca",
            clock=lambda: dt.datetime.now(dt.UTC).timestamp(),
        )
        self.out = root / "broker"
        self.broker = Broker(root)
        self.creds: dict[str, Creds] = {}

    def enroll(self, device_id: str, fleet: str) -> Creds:
        token = self.enrollment.enroll_device(device_id, fleet=fleet, labels={})
        key = identities.make_key()
        cert = self.enrollment.enroll(token.token, identities.make_csr(key))
        return self._store(device_id, identities.key_pem(key), cert.pem)

    def _store(self, name: str, key_pem: bytes, cert_pem: bytes) -> Creds:
        d = self.root / "creds" / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "key.pem").write_bytes(key_pem)
        (d / "key.pem").chmod(0o600)
        (d / "cert.pem").write_bytes(cert_pem)
        self.creds[name] = c = Creds(name, d / "cert.pem", d / "key.pem")
        return c

    def configure(self, *, controllers: int | None = None) -> brokerconfig.BrokerFiles:
        """Run broker-config and point the broker at its mosquitto.conf."""
        files = brokerconfig.write(
            self.enrollment,
            self.out,
            controller_dir=self.root / "ca",
            hosts=["127.0.0.1", "localhost"],
            port=self.broker.port,
            bind="127.0.0.1",
            controllers=controllers,
            now=dt.datetime.now(dt.UTC),
        )
        for c in files.controllers:
            self.creds[c.identity] = Creds(c.identity, c.cert, c.key)
        generated = (self.out / "mosquitto.conf").read_text()
        self.broker.conf.write_text(
            "persistence false\n" + ("user root\n" if os.geteuid() == 0 else "") + generated
        )
        return files

    @property
    def ca(self) -> str:
        return str(self.out / "ca.pem")

    def client(self, creds: Creds | None, *, client_id: str = "") -> mqtt.Client:
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id or (creds.name if creds else "x")
        )
        c.tls_set(
            ca_certs=self.ca,
            certfile=str(creds.cert) if creds else None,
            keyfile=str(creds.key) if creds else None,
            cert_reqs=ssl.CERT_REQUIRED,
        )
        return c


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    if not mosquitto_available():
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    s = Site(tmp_path)
    s.enroll("dev-a", "f1")
    s.enroll("dev-b", "f1")
    s.enroll("dev-c", "f2")
    s.configure()
    s.broker.start()
    yield s
    s.broker.kill()


class Conn:
    """A connected paho client that records what it receives and when it was cut off."""

    def __init__(self, site: Site, creds: Creds | None, *, client_id: str = "") -> None:
        self.client = site.client(creds, client_id=client_id)
        self.inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.connects: queue.Queue[bool] = queue.Queue()
        self.disconnects = 0
        self.granted: queue.Queue[list[int]] = queue.Queue()
        self.client.on_message = lambda _c, _u, m: self.inbox.put((m.topic, bytes(m.payload)))
        self.client.on_connect = lambda _c, _u, _f, rc, _p: self.connects.put(not rc.is_failure)
        self.client.on_subscribe = lambda _c, _u, _m, codes, _p: self.granted.put(
            [int(x.value) for x in codes]
        )
        self.client.on_disconnect = self._gone
        self.client.connect("127.0.0.1", site.broker.port)
        self.client.loop_start()
        assert self.connects.get(timeout=TIMEOUT), "the broker refused the connection"

    def _gone(self, *_args: object) -> None:
        self.disconnects += 1

    def subscribe(self, *filters: str) -> list[int]:
        self.client.subscribe([(f, 1) for f in filters])
        return self.granted.get(timeout=TIMEOUT)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(TIMEOUT)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


Connect = Callable[..., Conn]


@pytest.fixture
def connect(site: Site) -> Iterator[Connect]:
    """``connect(creds, client_id=...)``: a connected client, closed at the end of the test."""
    opened: list[Conn] = []

    def make(creds: Creds | None, *, client_id: str = "") -> Conn:
        conn = Conn(site, creds, client_id=client_id)
        opened.append(conn)
        return conn

    yield make
    for c in opened:
        c.close()


def refused(site: Site, creds: Creds | None, *, client_id: str = "") -> bool:
    """True when the broker will not let this client in (TLS or MQTT level)."""
    c = site.client(creds, client_id=client_id)
    result: queue.Queue[bool] = queue.Queue()
    c.on_connect = lambda _c, _u, _f, rc, _p: result.put(rc.is_failure)
    try:
        c.connect("127.0.0.1", site.broker.port)
    except (ssl.SSLError, OSError):
        return True
    try:
        while True:
            rc = c.loop(timeout=1.0)
            if rc != mqtt.MQTT_ERR_SUCCESS:
                return True
            try:
                return result.get_nowait()
            except queue.Empty:
                continue
    finally:
        c.disconnect()


def test_generated_config_requires_client_certificates(site: Site) -> None:
    conf = (site.out / "mosquitto.conf").read_text()
    for line in (
        "require_certificate true",
        "use_identity_as_username true",
        "use_username_as_clientid true",
        f"crlfile {(site.out / 'crl.pem').resolve()}",
    ):
        assert line in conf.splitlines()
    assert (site.out / "server.key").stat().st_mode & 0o777 == 0o600


def test_device_publishes_its_status_and_reads_its_desired_state(
    site: Site, connect: Connect
) -> None:
    ctl = connect(site.creds[CONTROLLER], client_id="edgefleet-controller")
    assert ctl.subscribe("ef/v1/dev/+/status", "ef/v1/fleet/+/presence/+") == [1, 1]
    dev = connect(site.creds["dev-a"])
    assert dev.subscribe(topics.desired("dev-a"), topics.fleet_presence("f1")) == [1, 1]
    ctl.publish(topics.desired("dev-a"), b"desired-for-a", retain=True)
    assert dev.inbox.get(timeout=TIMEOUT) == (topics.desired("dev-a"), b"desired-for-a")
    dev.publish(topics.status("dev-a"), b"status-of-a")
    assert ctl.inbox.get(timeout=TIMEOUT) == (topics.status("dev-a"), b"status-of-a")
    dev.publish(topics.presence("f1", "dev-a"), b"online")
    assert ctl.inbox.get(timeout=TIMEOUT) == (topics.presence("f1", "dev-a"), b"online")


def test_device_cannot_write_for_others_or_read_other_fleets(site: Site, connect: Connect) -> None:
    ctl = connect(site.creds[CONTROLLER], client_id="edgefleet-controller")
    ctl.subscribe("ef/v1/#")
    dev = connect(site.creds["dev-a"])
    # Forged first, legitimate last, on one connection: delivery keeps order, so when the
    # legitimate message is the first to arrive, the broker dropped every forged one.
    for topic in (
        topics.status("dev-b"),
        topics.desired("dev-b"),
        topics.desired("dev-a"),  # not even its own desired state: only the controller writes
        topics.presence("f2", "dev-a"),  # its own id in another fleet
        topics.presence("f1", "dev-b"),  # a neighbour's presence
        topics.presence("f2", "dev-c"),
    ):
        dev.publish(topic, b"forged")
    dev.publish(topics.status("dev-a"), b"mine")
    assert ctl.inbox.get(timeout=TIMEOUT) == (topics.status("dev-a"), b"mine")
    assert ctl.inbox.empty()
    # Reading: subscriptions are granted, but the broker delivers only what the ACL lets
    # dev-a read; the allowed message, sent last, is the first and only one to arrive.
    dev.subscribe(topics.desired("dev-b"), topics.fleet_presence("f2"), topics.fleet_presence("f1"))
    # (QoS 1: each PUBACK comes after the broker queued the message to its subscribers.)
    ctl.publish(topics.desired("dev-b"), b"for-b")
    connect(site.creds["dev-c"]).publish(topics.presence("f2", "dev-c"), b"other-fleet")
    connect(site.creds["dev-b"]).publish(topics.presence("f1", "dev-b"), b"neighbour")
    assert dev.inbox.get(timeout=TIMEOUT) == (topics.presence("f1", "dev-b"), b"neighbour")
    assert dev.inbox.empty()


def test_client_id_takeover_is_impossible(site: Site, connect: Connect) -> None:
    ctl = connect(site.creds[CONTROLLER], client_id="edgefleet-controller")
    ctl.subscribe("ef/v1/dev/+/status")
    dev_a = connect(site.creds["dev-a"])
    # dev-b asks for dev-a's client id, then for the controller's: the broker makes its
    # client id its certificate's CN (use_username_as_clientid), so nobody is kicked off.
    intruders = [
        connect(site.creds["dev-b"], client_id="dev-a"),
        connect(site.creds["dev-b"], client_id="edgefleet-controller"),
    ]
    assert all(i.connects.empty() for i in intruders)  # each had its one CONNACK already
    # Both victims still hold their connection: dev-a's QoS 1 publish goes through on it
    # and reaches the controller on its connection, and neither saw a disconnect.
    dev_a.publish(topics.status("dev-a"), b"still-here")
    assert ctl.inbox.get(timeout=TIMEOUT) == (topics.status("dev-a"), b"still-here")
    assert dev_a.disconnects == 0
    assert ctl.disconnects == 0


def test_controller_replicas_have_an_identity_each_and_none_is_kicked(
    site: Site, connect: Connect
) -> None:
    """broker-config --controllers 2: two certificates, two identities, each with the
    controller's ACL rights, connected at once; the control: a second connection on one of
    them knocks the first off, as two replicas sharing controller.crt did."""
    files = site.configure(controllers=2)
    site.broker.stop()
    site.broker.start()  # the new ACL (and the same CA, CRL and server certificate)
    names = [c.identity for c in files.controllers]
    assert names == [f"{CONTROLLER}@0", f"{CONTROLLER}@1"]
    assert [c.cert.name for c in files.controllers] == ["controller-0.crt", "controller-1.crt"]
    assert all(c.key.stat().st_mode & 0o777 == 0o600 for c in files.controllers)
    replicas = [connect(site.creds[n]) for n in names]
    for r in replicas:
        assert r.subscribe("ef/v1/dev/+/status") == [1]
    dev = connect(site.creds["dev-a"])
    dev.subscribe(topics.desired("dev-a"))
    dev.publish(topics.status("dev-a"), b"to-both")
    for r in replicas:  # each reads the reports on its own connection ...
        assert r.inbox.get(timeout=TIMEOUT) == (topics.status("dev-a"), b"to-both")
    for i, r in enumerate(replicas):  # ... and may write desired states
        r.publish(topics.desired("dev-a"), f"from-{i}".encode())
    got = {dev.inbox.get(timeout=TIMEOUT), dev.inbox.get(timeout=TIMEOUT)}
    assert got == {(topics.desired("dev-a"), b"from-0"), (topics.desired("dev-a"), b"from-1")}
    assert [r.disconnects for r in replicas] == [0, 0]
    # The controller's rights, no more: the ACL block of each is the one controller's.
    one = brokerconfig.acl_text([], controllers=[CONTROLLER]).split("\n\n")[1].strip()
    blocks = (site.out / "edgefleet.acl").read_text().split("\n\n")
    assert [one.replace(CONTROLLER, n, 1) for n in names] == blocks[1:3]
    # refresh (run --broker-dir, on every enroll) keeps both in the ACL
    brokerconfig.refresh(site.enrollment, site.out, now=dt.datetime.now(dt.UTC))
    assert (site.out / "edgefleet.acl").read_text().split("\n\n")[1:3] == blocks[1:3]
    # broker-config again without --controllers keeps two
    assert [c.identity for c in site.configure().controllers] == names
    # The control: one identity twice.
    connect(site.creds[names[0]], client_id="another-id")
    deadline = time.monotonic() + TIMEOUT
    while replicas[0].disconnects == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert replicas[0].disconnects >= 1
    assert replicas[1].disconnects == 0


def test_a_client_id_that_is_not_the_certificates_is_refused(tmp_path: Path) -> None:
    """``run --mqtt-cert`` takes its client id from the certificate (the id the broker gives
    it); asking for another is one line at start, before anything is made."""
    ca = CertificateAuthority.open(tmp_path / "ca", now=dt.datetime.now(dt.UTC))
    pair = ca.issue_client(
        f"{CONTROLLER}@1", lifetime=dt.timedelta(days=1), now=dt.datetime.now(dt.UTC)
    )
    (tmp_path / "c.crt").write_bytes(pair.cert_pem)
    (tmp_path / "c.key").write_bytes(pair.key_pem)
    (tmp_path / "c.key").chmod(0o600)
    data = tmp_path / "data"
    cmd = [sys.executable, "-m", "edgefleet.controller", "run", "--data-dir", str(data),
           "--mqtt", "mqtts://127.0.0.1:8883", "--mqtt-cert", str(tmp_path / "c.crt"),
           "--mqtt-key", str(tmp_path / "c.key"), "--mqtt-client-id", CONTROLLER]  # fmt: skip
    env = {**os.environ, "EDGEFLEET_LOG_JSON": "0"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    said = " ".join(done.stderr.replace("\u2502", " ").split())  # click's usage box, unwrapped
    assert (
        f"--mqtt-client-id '{CONTROLLER}' is not the identity of --mqtt-cert ('{CONTROLLER}@1')"
    ) in said, done.stderr
    assert not (data / "controller.db").exists()


def test_an_oversize_payload_is_dropped_on_every_topic(site: Site, connect: Connect) -> None:
    """The generated config's ``message_size_limit``: one byte over it, on every topic a device
    writes (to the controller) and every topic the controller writes (to devices), is dropped
    by the broker; the sender keeps its connection (only a packet past ``max_packet_size``
    costs it that, ``tests/deploy/test_broker_limits.py``)."""
    conf = (site.out / "mosquitto.conf").read_text().splitlines()
    (limit,) = [int(x.split()[1]) for x in conf if x.startswith("message_size_limit ")]
    oversize = b"x" * (limit + 1)
    ctl = connect(site.creds[CONTROLLER], client_id="edgefleet-controller")
    ctl.subscribe("ef/v1/#")
    dev = connect(site.creds["dev-a"])
    dev.subscribe(topics.desired("dev-a"), topics.trust(), topics.roster("f1"))
    # Oversize first on every topic, a marker last, on one connection: delivery keeps order,
    # so when the marker is the first to arrive, the broker dropped every oversize message.
    for topic in (
        topics.status("dev-a"),
        topics.events("dev-a"),
        topics.telemetry("dev-a"),
        topics.presence("f1", "dev-a"),
    ):
        dev.publish(topic, oversize)
    dev.publish(topics.status("dev-a"), b"marker")
    assert ctl.inbox.get(timeout=TIMEOUT) == (topics.status("dev-a"), b"marker")
    for topic in (topics.desired("dev-a"), topics.trust(), topics.roster("f1")):
        ctl.publish(topic, oversize, retain=True)
    ctl.publish(topics.desired("dev-a"), b"marker")
    assert dev.inbox.get(timeout=TIMEOUT) == (topics.desired("dev-a"), b"marker")
    assert dev.inbox.empty() and ctl.inbox.empty()
    assert dev.disconnects == 0 and ctl.disconnects == 0
    # Nothing oversize was kept as a retained message: a device subscribing later gets
    # retained messages before anything published after its subscription; the marker is first.
    late = connect(site.creds["dev-b"])
    late.subscribe(topics.trust(), topics.roster("f1"))
    ctl.publish(topics.trust(), b"after")
    assert late.inbox.get(timeout=TIMEOUT) == (topics.trust(), b"after")


def test_no_certificate_or_a_foreign_ca_cannot_connect(site: Site) -> None:
    assert refused(site, None, client_id="dev-a")
    other = CertificateAuthority.open(site.root / "other-ca", now=dt.datetime.now(dt.UTC))
    key = identities.make_key()
    forged = other.issue_device(
        identities.make_csr(key),
        device_id="dev-a",
        fleet="f1",
        lifetime=dt.timedelta(days=1),
        now=dt.datetime.now(dt.UTC),
    )
    assert refused(site, site._store("forged-a", identities.key_pem(key), forged.pem))
    assert not refused(site, site.creds["dev-a"])  # the control: the real dev-a gets in


def test_revoked_device_cannot_connect(site: Site) -> None:
    assert not refused(site, site.creds["dev-c"])
    site.enrollment.revoke("dev-c")
    assert "user dev-c" in (site.out / "edgefleet.acl").read_text()
    site.configure()  # broker-config again: the CRL lists dev-c, the ACL no longer has it
    assert "user dev-c" not in (site.out / "edgefleet.acl").read_text()
    site.broker.stop()
    site.broker.start()
    assert refused(site, site.creds["dev-c"])
    assert not refused(site, site.creds["dev-a"])


def test_controller_session_connects_with_its_client_certificate(site: Site) -> None:
    """The shared MQTT adapter (controller and agent) with a client certificate."""
    creds = site.creds[CONTROLLER]
    session = MqttSession(
        f"mqtts://127.0.0.1:{site.broker.port}",
        client_id="edgefleet-controller",
        subscriptions=[("ef/v1/dev/+/status", 1)],
        ca_file=site.ca,
        cert_file=str(creds.cert),
        key_file=str(creds.key),
    )
    session.start()
    try:
        assert session.wait_subscribed(TIMEOUT)
    finally:
        session.stop()


def test_shipped_examples_match_what_broker_config_writes() -> None:
    root = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto"

    def directives(text: str) -> list[str]:
        return [line for line in text.splitlines() if line and not line.startswith("#")]

    acl = brokerconfig.acl_text(
        [("cam-1", "factory-a"), ("cam-2", "factory-a")], controllers=[CONTROLLER]
    )
    assert directives(acl) == directives((root / "edgefleet-mtls.acl.example").read_text())
    shipped = directives((root / "mosquitto-mtls.conf").read_text())
    generated = brokerconfig.mosquitto_conf(Path("/etc/mosquitto/edgefleet"), port=8883)
    assert set(directives(generated)) <= set(shipped)
