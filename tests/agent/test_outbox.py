"""The agent's persisted outbox: order, durability across a restart, the status counter, bounds,
and draining into a real Mosquitto that was down when the events were written."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.agent.outbox import Outbox
from edgefleet.common.mqttclient import MqttSession
from tests.conftest import Broker, mosquitto_available


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Outbox]:
    b = Outbox(tmp_path / "outbox.db")
    yield b
    b.stop()


def test_messages_keep_their_order_and_survive_a_restart(tmp_path: Path) -> None:
    first = Outbox(tmp_path / "outbox.db")
    seqs = [first.put("t/a", lambda s, i=i: f"{i}:{s}".encode()) for i in range(3)]
    first.stop()  # the process dies; the file stays

    again = Outbox(tmp_path / "outbox.db")
    try:
        pending = again.pending()
        assert [m.seq for m in pending] == seqs == sorted(seqs)
        assert [m.payload for m in pending] == [f"{i}:{s}".encode() for i, s in enumerate(seqs)]
        again.delete(seqs[:2])
        later = again.put("t/a", lambda s: b"later")
        assert later > seqs[-1], "a seq is never handed out twice, even after deletes"
        assert [m.seq for m in again.pending()] == [seqs[2], later]
    finally:
        again.stop()


def test_status_seq_grows_across_restarts_even_when_the_clock_goes_back(tmp_path: Path) -> None:
    clock = [5_000_000]
    box = Outbox(tmp_path / "outbox.db", clock_us=lambda: clock[0])
    a = box.next_status_seq()
    b = box.next_status_seq()
    box.stop()
    clock[0] = 1_000  # a device without an RTC boots in 1970
    box = Outbox(tmp_path / "outbox.db", clock_us=lambda: clock[0])
    c = box.next_status_seq()
    box.stop()
    assert a == 5_000_000 and b == a + 1 and c == b + 1


def test_a_wiped_outbox_still_counts_up_from_the_clock(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "one.db", clock_us=lambda: 100)
    old = box.next_status_seq()
    box.stop()
    fresh = Outbox(tmp_path / "two.db", clock_us=lambda: 200)
    try:
        assert fresh.next_status_seq() > old
    finally:
        fresh.stop()


def test_a_full_outbox_drops_the_oldest(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", max_messages=3)
    try:
        for i in range(5):
            box.put("t", lambda _s, i=i: str(i).encode())
        assert [m.payload for m in box.pending()] == [b"2", b"3", b"4"]
        assert box.dropped == 2
    finally:
        box.stop()


def test_a_full_outbox_drops_telemetry_before_events_and_keeps_the_count(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", max_messages=3)
    try:
        box.put("edgefleet/dev/d/events", lambda _s: b"e1")
        for i in range(4):
            box.put("edgefleet/dev/d/telemetry", lambda _s, i=i: f"t{i}".encode())
        box.put("edgefleet/dev/d/events", lambda _s: b"e2")
        assert [m.payload for m in box.pending()] == [b"e1", b"t3", b"e2"]
        assert box.dropped == 3
    finally:
        box.stop()
    again = Outbox(tmp_path / "outbox.db", max_messages=3)
    try:
        assert again.dropped == 3  # counted in the file: a restart does not forget it
    finally:
        again.stop()


def test_events_written_while_the_broker_was_down_arrive_in_order(tmp_path: Path) -> None:
    if not mosquitto_available():
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    broker = Broker(tmp_path)
    box = Outbox(tmp_path / "outbox.db")
    topic = "ef/v1/dev/outbox-test/events"
    for i in range(20):  # written while no broker runs
        box.put(topic, lambda _s, i=i: f"{i}".encode())
    session = MqttSession(broker.url, client_id="outbox-test", on_connect=box.wake)
    got: queue.Queue[bytes] = queue.Queue()
    reader = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="outbox-reader")
    reader.on_message = lambda _c, _u, m: got.put(bytes(m.payload))
    try:
        broker.start()
        subscribed: queue.Queue[int] = queue.Queue()
        reader.on_subscribe = lambda *_a: subscribed.put(1)
        reader.connect("127.0.0.1", broker.port)
        reader.loop_start()
        reader.subscribe(topic, qos=1)
        subscribed.get(timeout=5)
        box.start(session)
        session.start()
        received = [got.get(timeout=20) for _ in range(20)]
        assert received == [f"{i}".encode() for i in range(20)]
        assert wait_empty(box), "acknowledged messages stay in the outbox"
    finally:
        reader.disconnect()
        reader.loop_stop()
        session.stop()
        box.stop()
        broker.kill()


def wait_empty(box: Outbox, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(box) == 0:
            return True
        time.sleep(0.05)
    return False
