"""The neighbour table fed presence payloads, without a broker (the adapter's pure half)."""

from __future__ import annotations

from edgefleet.agent.neighbours import NeighbourTable
from edgefleet.common import topics, wire
from edgefleet.common import types as t


def presence(device_id: str, *, online: bool = True, fleet: str = "f1") -> tuple[str, bytes]:
    p = t.Presence(
        device_id=device_id,
        fleet=fleet,
        online=online,
        predict_endpoint=f"{device_id}:1" if online else "",
        active_release="digits:1.0.0",
    )
    return topics.presence(fleet, device_id), wire.presence_to_pb(p).SerializeToString()


def test_rows_follow_presence_and_ignore_self_and_junk() -> None:
    clock = iter(range(100)).__next__
    table = NeighbourTable(device_id="me", fleet="f1", clock=lambda: float(clock()))
    assert table.observe(*presence("a"))
    assert table.observe(*presence("b"))
    assert table.observe(*presence("me"))  # its own: accepted, not a row
    assert not table.observe(*presence("x", fleet="f2"))  # another fleet's
    assert not table.observe(topics.presence("f1", "c"), b"\xff\x00junk")
    topic_a, _ = presence("a")
    assert not table.observe(topic_a, presence("b")[1])  # payload of b on a's topic
    assert table.malformed == 2
    assert [(n.device_id, n.online, n.endpoint) for n in table.snapshot()] == [
        ("a", True, "a:1"),
        ("b", True, "b:1"),
    ]

    table.observe(*presence("a", online=False))  # the last will
    assert [n.device_id for n in table.online()] == ["b"]
    assert [n.online for n in table.snapshot()] == [False, True]

    table.observe(topics.presence("f1", "b"), b"")  # retained presence cleared
    assert [n.device_id for n in table.snapshot()] == ["a"]
    pb = table.to_pb()
    assert [(m.device_id, m.online, m.endpoint) for m in pb] == [("a", False, "")]
