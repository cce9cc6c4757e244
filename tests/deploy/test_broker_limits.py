"""The shipped broker size limits, enforced by a real Mosquitto: what a fleet legitimately
sends passes, an oversize payload is dropped, an oversize packet costs its sender the
connection (the broker never reads it whole)."""

from __future__ import annotations

import json
import queue
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.common import desired, digests, signing, topics, wire
from edgefleet.common import types as t
from edgefleet.controller import brokerconfig
from tests.conftest import Broker, mosquitto_available

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = (
    ROOT / "deploy" / "mosquitto" / "mosquitto.conf",
    ROOT / "deploy" / "mosquitto" / "mosquitto-mtls.conf",
    ROOT / "deploy" / "docker" / "mosquitto.dev.conf",
)
LIMIT_KEYS = ("message_size_limit", "max_packet_size")


def limits(conf: Path | str) -> dict[str, int]:
    text = conf.read_text() if isinstance(conf, Path) else conf
    found = re.findall(rf"^({'|'.join(LIMIT_KEYS)})\s+(\d+)\s*$", text, re.M)
    return {key: int(value) for key, value in found}


SITE = limits(SHIPPED[0])


def test_every_shipped_config_sets_the_same_limits() -> None:
    assert set(SITE) == set(LIMIT_KEYS)
    assert SITE["message_size_limit"] == 1 << 20
    assert SITE["max_packet_size"] > SITE["message_size_limit"]
    for conf in SHIPPED[1:]:
        assert limits(conf) == SITE, conf
    # and the fragment `edge-controller broker-config` writes for a site's mTLS broker
    assert limits(brokerconfig.mosquitto_conf(Path("/etc/mosquitto/edgefleet"), port=8883)) == SITE


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[Broker]:
    if not mosquitto_available():
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    b = Broker(tmp_path, extra_conf="\n".join(f"{k} {v}" for k, v in SITE.items()))
    b.start()
    yield b
    b.kill()


class Client:
    def __init__(self, broker: Broker, name: str) -> None:
        self.inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.dropped = threading.Event()
        subscribed = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"limits-{name}")
        self.c.on_message = lambda _c, _u, m: self.inbox.put((m.topic, m.payload))
        self.c.on_subscribe = lambda *_a: subscribed.set()
        self.c.on_disconnect = lambda *_a: self.dropped.set()
        self._subscribed = subscribed
        self.c.connect("127.0.0.1", broker.port)
        self.c.loop_start()

    def subscribe(self, topic: str) -> None:
        self.c.subscribe(topic, qos=1)
        assert self._subscribed.wait(5)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def clients(limited: Broker) -> Iterator[dict[str, Client]]:
    made = {name: Client(limited, name) for name in ("controller", "device", "other")}
    made["controller"].subscribe("ef/v1/#")
    yield made
    for c in made.values():
        c.close()


def largest_desired_state() -> bytes:
    """A desired state as large as a release makes them: a compression report of 128 KiB,
    golden data, annotations, and a list of sources."""
    key = signing.generate()
    report = json.dumps({"candidates": [{"name": f"c{i}", "x": "y" * 100} for i in range(1200)]})
    manifest = t.Manifest(
        name="digits", version="1.2.3", model_digest=digests.of_bytes(b"m"), model_size=10**9,
        inputs=(t.TensorSpec("pixels", "float32", (-1, 64)),),
        outputs=(t.TensorSpec("label", "int64", (-1,)),),
        compression_report_json=report, golden_digest=digests.of_bytes(b"g"), golden_size=10**6,
        annotations={f"k{i}": "v" * 200 for i in range(50)},
    )  # fmt: skip
    signed = signing.sign(wire.encode_manifest(manifest), signing.MANIFEST_TYPE, key)
    return desired.seal(
        device_id="dev-a", fleet="f", generation=2**40, signed_manifest=signed,
        rollout_id="r" * 64, issued_at_ms=int(time.time() * 1000),
        artifact_sources=[f"oci://registry{i}.example:5000/edgefleet/digits" for i in range(16)],
        key=key,
    )  # fmt: skip


def test_the_largest_legitimate_payload_passes(clients: dict[str, Client]) -> None:
    payload = largest_desired_state()
    assert 128 << 10 < len(payload) < SITE["message_size_limit"] // 4  # room to grow

    clients["other"].publish(topics.desired("dev-a"), payload, retain=True)

    assert clients["controller"].inbox.get(timeout=5) == (topics.desired("dev-a"), payload)
    clients["other"].publish(topics.desired("dev-a"), b"", retain=True)  # clear it


def test_a_payload_over_the_limit_is_dropped(clients: dict[str, Client]) -> None:
    device, ctl = clients["device"], clients["controller"]
    oversize = b"x" * (SITE["message_size_limit"] + 1)

    # Oversize first, marker second, on one connection: delivery keeps order, so when the
    # marker is what arrives the oversize message was dropped by the broker
    device.publish(topics.status("dev-a"), oversize)
    device.publish(topics.status("dev-a"), b"marker")

    assert ctl.inbox.get(timeout=5) == (topics.status("dev-a"), b"marker")
    assert not device.dropped.is_set()


def test_a_packet_over_max_packet_size_costs_the_connection(clients: dict[str, Client]) -> None:
    device, ctl = clients["device"], clients["controller"]

    device.c.publish(topics.status("dev-a"), b"x" * (4 << 20), qos=1)
    assert device.dropped.wait(10), "the broker kept the connection"
    clients["other"].publish(topics.status("dev-b"), b"marker")

    assert ctl.inbox.get(timeout=5) == (topics.status("dev-b"), b"marker")
