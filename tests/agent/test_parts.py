"""Small parts without a network: state file, failpoint specs, tensor codec, telemetry maths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgefleet.agent import failpoints, tensors
from edgefleet.agent.errors import StateFileError
from edgefleet.agent.state import DeviceState, PendingInstall, SlotInfo, StateFile
from edgefleet.agent.telemetry import Window, summarize
from edgefleet.common import wire
from edgefleet.common.errors import InvalidInputError
from edgefleet.common.types import InstallPhase
from edgefleet.v1 import common_pb2, inference_pb2


def test_state_round_trips_and_a_corrupt_file_is_refused(tmp_path: Path) -> None:
    f = StateFile(tmp_path / "state.json")
    assert f.load() == DeviceState()
    slot = SlotInfo("g3", "digits:1.0.0", "sha256:" + "1" * 64, "sha256:" + "2" * 64)
    state = DeviceState(
        generation_applied=3,
        phase=InstallPhase.ACTIVE,
        target_release="digits:1.1.0",
        active=slot,
        install=PendingInstall(
            generation=4,
            release="digits:1.1.0",
            slot="g4",
            phase=InstallPhase.STAGED,
            manifest_digest="sha256:" + "3" * 64,
            model_digest="sha256:" + "4" * 64,
            desired=b"\x00signed\xff",
            attempts=2,
        ),
    )
    f.save(state)
    assert f.load() == state
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temp files left
    (tmp_path / "state.json").write_text('{"version": 1, "generation_')
    with pytest.raises(StateFileError, match="move it away"):
        f.load()


@pytest.mark.parametrize(
    ("spec", "rules"),
    [
        ("", {}),
        ("fetch_chunk=kill", {"fetch_chunk": failpoints.Rule("kill", count=1)}),
        (
            "fetch_chunk=kill:3, before_activate=sleep:0.5",
            {
                "fetch_chunk": failpoints.Rule("kill", count=3),
                "before_activate": failpoints.Rule("sleep", seconds=0.5),
            },
        ),
    ],
)
def test_failpoint_specs(spec: str, rules: dict[str, failpoints.Rule]) -> None:
    assert failpoints.parse(spec) == rules


@pytest.mark.parametrize("spec", ["nowhere=kill", "fetch_chunk=explode", "fetch_chunk=kill:x"])
def test_bad_failpoint_specs(spec: str) -> None:
    with pytest.raises(InvalidInputError, match="EDGEFLEET_FAILPOINTS"):
        failpoints.parse(spec)


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.arange(5, dtype=np.int64),
        np.array([True, False]),
        np.zeros((0, 3), np.uint8),
        np.arange(6, dtype=">i4").reshape(2, 3),  # big-endian: through wire
        np.arange(12, dtype=np.float64).reshape(3, 4)[:, ::2],  # strided: through wire
    ],
)
def test_tensor_codec_matches_wire(array: np.ndarray) -> None:
    for _ in range(2):  # the first call fills the caches, the second takes the fast path
        reply = inference_pb2.PredictResponse()
        tensors.add_all(reply.outputs, {"x": array})
        assert reply.outputs[0] == wire.array_to_pb("x", array)
        decoded = tensors.decode(reply.outputs[0])
        np.testing.assert_array_equal(decoded, wire.array_from_pb(reply.outputs[0]))
        np.testing.assert_array_equal(decoded, array)


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (common_pb2.Tensor(name="x", dtype="float32", shape=[2, 2], data=b"\0" * 12), "needs 16"),
        (common_pb2.Tensor(name="x", dtype="float32", shape=[-1], data=b""), "negative"),
        (common_pb2.Tensor(name="x", dtype="nope", shape=[1], data=b"\0"), "unknown dtype"),
        (common_pb2.Tensor(name="x", dtype="U3", shape=[1], data=b"\0" * 12), "not numeric"),
    ],
)
def test_tensor_codec_refuses_like_wire(tensor: common_pb2.Tensor, message: str) -> None:
    good = common_pb2.Tensor(name="x", dtype="float32", shape=[1], data=b"\0" * 4)
    tensors.decode(good)  # warm the cache: the fast path must refuse the same way
    with pytest.raises(InvalidInputError, match=message):
        tensors.decode(tensor)
    with pytest.raises(InvalidInputError, match="given more than once"):
        tensors.decode_all([good, good])


def test_telemetry_summary() -> None:
    w = Window()
    for ms in range(1, 101):
        w.record(ms / 1000, ok=True)
    w.record(5.0, ok=False)
    sample = summarize(
        w.drain(),
        device_id="d",
        release="r",
        window_s=10,
        cpu_percent=3,
        memory_bytes=1,
        at_ms=1,
    )
    assert (sample.requests, sample.errors) == (101, 1)
    assert sample.p50_ms == pytest.approx(50.5) and sample.p99_ms == pytest.approx(99.01)
    assert sample.power_w is None
    assert w.drain().requests == 0
