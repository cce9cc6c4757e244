from __future__ import annotations

import numpy as np
import pytest

from edgefleet.common import topics, wire
from edgefleet.common import types as t
from edgefleet.common.errors import InvalidInputError, MalformedMessageError
from edgefleet.v1 import common_pb2


@pytest.mark.parametrize(
    "dtype", ["float32", "float64", "int64", "int32", "uint8", "bool", "float16"]
)
def test_tensor_round_trip(dtype: str) -> None:
    a = (np.arange(12) % 3).astype(dtype).reshape(3, 4)
    back = wire.array_from_pb(wire.array_to_pb("x", a))
    assert back.dtype == a.dtype and back.shape == a.shape
    np.testing.assert_array_equal(back, a)


@pytest.mark.parametrize(
    ("msg", "match"),
    [
        (
            common_pb2.Tensor(name="x", dtype="float32", shape=[2, 2], data=b"\0" * 15),
            "needs 16 bytes",
        ),
        (common_pb2.Tensor(name="x", dtype="complexity", shape=[1], data=b"\0"), "unknown dtype"),
        (common_pb2.Tensor(name="x", dtype="object", shape=[1], data=b"\0" * 8), "not numeric"),
        (
            common_pb2.Tensor(name="x", dtype="float32", shape=[-1, 2], data=b""),
            "negative dimension",
        ),
    ],
)
def test_bad_tensors_name_the_problem(msg: common_pb2.Tensor, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        wire.array_from_pb(msg)


def test_status_round_trip() -> None:
    s = t.DeviceStatus(
        device_id="d1",
        fleet="f",
        phase=t.InstallPhase.HEALTH_CHECK,
        labels={"site": "x"},
        active_release="m:1.0.0",
        generation_applied=3,
        at_ms=5,
    )
    assert wire.decode_status(wire.status_to_pb(s).SerializeToString()) == s


def test_telemetry_keeps_absent_power_absent() -> None:
    x = t.Telemetry("d1", "m:1.0.0", 10.0, 5, 0, 1.0, 2.0, 3.0)
    back = wire.decode_telemetry(wire.telemetry_to_pb(x).SerializeToString())
    assert back.power_w is None and back == x
    y = t.Telemetry("d1", "m:1.0.0", 10.0, 5, 0, 1.0, 2.0, 3.0, power_w=0.0)
    assert wire.decode_telemetry(wire.telemetry_to_pb(y).SerializeToString()).power_w == 0.0


@pytest.mark.parametrize(
    "decode", [wire.decode_status, wire.decode_event, wire.decode_telemetry, wire.decode_presence]
)
@pytest.mark.parametrize("payload", [b"", b"\x08", b"garbage!"])
def test_malformed_reports(decode, payload: bytes) -> None:
    with pytest.raises(MalformedMessageError):
        decode(payload)


def test_nan_telemetry_is_malformed() -> None:
    x = t.Telemetry("d1", "r", 10.0, 1, 0, float("nan"), 1.0, 1.0)
    with pytest.raises(MalformedMessageError, match="NaN"):
        wire.decode_telemetry(wire.telemetry_to_pb(x).SerializeToString())


@pytest.mark.parametrize(
    ("topic", "parsed"),
    [
        ("ef/v1/dev/d1/status", topics.Parsed("status", "d1")),
        ("ef/v1/dev/d1/desired", topics.Parsed("desired", "d1")),
        ("ef/v1/fleet/f/presence/d1", topics.Parsed("presence", "d1", "f")),
    ],
)
def test_topics_parse(topic: str, parsed: topics.Parsed) -> None:
    assert topics.parse(topic) == parsed


@pytest.mark.parametrize(
    "topic", ["ef/v1/dev/d1", "ef/v2/dev/d1/status", "ef/v1/dev/d1/other", "x"]
)
def test_foreign_topics_are_malformed(topic: str) -> None:
    with pytest.raises(MalformedMessageError):
        topics.parse(topic)


@pytest.mark.parametrize(
    "text", ["digits", "digits:", ":1.0.0", "digits:1.0", "Digits:1.0.0", "a/b:1.0.0"]
)
def test_bad_release_refs(text: str) -> None:
    with pytest.raises(InvalidInputError):
        t.ReleaseRef.parse(text)


def test_release_ref() -> None:
    assert str(t.ReleaseRef.parse("digits:1.2.0-rc.1")) == "digits:1.2.0-rc.1"
