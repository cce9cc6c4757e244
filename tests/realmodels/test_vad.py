"""Silero VAD (a streaming voice-activity model: ``If`` subgraphs on a scalar sample rate, a
recurrent ``state`` [2, B, 128] input fed back from ``stateN``): eval and golden data with
broadcast inputs, compression that finishes with a report, and deployment to a real agent with
and without golden data (zeros with guessed dimensions never run this model)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgefleet.controller.compress import graphs
from edgefleet.v1 import controller_pb2 as pb
from tests.conftest import Broker
from tests.controller import support
from tests.controller.test_compressed_release import real_agent

from . import helpers

SAMPLES = 512  # one 32 ms chunk at 16 kHz


def audio(rows: int) -> np.ndarray:
    """Chunks of a tone in noise: what a microphone might hand the model."""
    rng = np.random.default_rng(0)
    t = np.arange(rows * SAMPLES, dtype=np.float32) / 16000
    wave = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.shape)
    return wave.astype(np.float32).reshape(rows, SAMPLES)


def shared() -> dict[str, np.ndarray]:
    return {
        "broadcast/state": np.zeros((2, 1, 128), np.float32),
        "broadcast/sr": np.array(16000, np.int64),
    }


def test_toposort_restores_a_graph_whose_subgraphs_were_reversed(silero: bytes) -> None:
    proto = onnx.load_model_from_string(silero)

    def reverse(graph: onnx.GraphProto) -> None:
        nodes = list(graph.node)
        for node in nodes:
            for a in node.attribute:
                if a.HasField("g"):
                    reverse(a.g)
        del graph.node[:]
        graph.node.extend(reversed(nodes))

    reverse(proto.graph)
    with pytest.raises(Exception, match="topologically sorted"):
        onnx.checker.check_model(proto)
    graphs.toposort(proto)
    onnx.checker.check_model(proto)
    feed = {"input": audio(1), "state": np.zeros((2, 1, 128), np.float32)}
    feed["sr"] = np.array(16000, np.int64)
    want = graphs.run(silero, [feed])[0]
    got = graphs.run(proto.SerializeToString(), [feed])[0]
    for a, b in zip(want, got, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_vad_compresses_with_broadcast_eval_data_and_deploys_with_and_without_golden_data(
    ctl: support.Running, broker: Broker, tmp_path: Path, silero: bytes
) -> None:
    name = support.unique("vad")
    helpers.upload(ctl, name, silero)
    request = pb.CompressRequest(
        name=name,
        recipe="int8-dynamic,fp16",
        eval_data=helpers.npz(input=audio(8), **shared()),
        max_accuracy_drop=5.0,
        search_objective=pb.OBJECTIVE_SIZE,
        time_budget_s=120.0,
    )
    result = list(ctl.stub.CompressModel(request, timeout=helpers.DEADLINE))[-1].result
    report = json.loads(result.report_json)
    assert [c["candidate"] for c in report["candidates"]] == ["int8-dynamic", "fp16"]
    assert all(c["verdict"] for c in report["candidates"])  # passed, failed or skipped: why
    for c in report["candidates"]:  # the weights live in the If branches: said, not hidden
        assert not c["verdict"].startswith("skipped") or "If subgraphs" in c["verdict"], c
    assert report["metric"] == "max-abs-error"  # one speech probability per chunk
    # fp16 converts the weights inside the If branches (it once skipped: "no fp32 weights")
    fp16 = report["candidates"][1]
    assert fp16["verdict"] == "passes", fp16
    assert any("inside If subgraphs converted" in n for n in fp16["notes"]), fp16
    assert result.passed and report["passed"] and report["winner"] == "fp16"

    fleet = support.unique("fleet")
    with real_agent(ctl, broker, tmp_path, fleet=fleet) as (agent, _endpoint):
        helpers.release(ctl, name, "1.0.0", model_version=1)  # no golden data
        helpers.deploy(ctl, f"{name}:1.0.0", fleet)
        passed = helpers.event(ctl, agent.device_id, "health_check_passed", f"{name}:1.0.0")
        assert "smoke inference skipped" in passed and "golden data" in passed

        golden = helpers.npz(**{"input/input": audio(3)}, **shared())
        helpers.release(ctl, name, "1.1.0", model_version=1, golden=golden)
        helpers.deploy(ctl, f"{name}:1.1.0", fleet)
        passed = helpers.event(ctl, agent.device_id, "health_check_passed", f"{name}:1.1.0")
        assert "3 golden rows pass" in passed


@pytest.mark.slow
def test_vad_compresses_over_a_stream_of_feeds_with_its_state_carried(
    ctl: support.Running, broker: Broker, tmp_path: Path, silero: bytes
) -> None:
    """The feeds layout (each feed as the model takes it: input [1, 512], sr a scalar) and
    ``--carry state=stateN``: the stream the model really sees, its state fed back."""
    from edgefleet.common import feeds

    name = support.unique("vad")
    helpers.upload(ctl, name, silero)
    chunks = audio(8)
    steps = [{"input": chunks[i : i + 1], "sr": np.array(16000, np.int64)} for i in range(8)]
    steps[0]["state"] = np.zeros((2, 1, 128), np.float32)
    request = pb.CompressRequest(
        name=name,
        recipe="int8-dynamic,fp16",
        eval_data=helpers.npz(**feeds.join(steps)),
        carry=["state=stateN"],
        max_accuracy_drop=5.0,
        search_objective=pb.OBJECTIVE_SIZE,
        time_budget_s=120.0,
        golden="always",
    )
    result = list(ctl.stub.CompressModel(request, timeout=helpers.DEADLINE))[-1].result
    report = json.loads(result.report_json)
    assert [c["candidate"] for c in report["candidates"]] == ["int8-dynamic", "fp16"]
    assert all(c["verdict"] for c in report["candidates"])

    whole = [dict(s) for s in steps[:3]]  # golden feeds are whole: each gives its state
    for s in whole[1:]:
        s["state"] = np.zeros((2, 1, 128), np.float32)
    fleet = support.unique("fleet")
    with real_agent(ctl, broker, tmp_path, fleet=fleet) as (agent, _endpoint):
        golden = helpers.npz(**feeds.join(whole))
        helpers.release(ctl, name, "1.2.0", model_version=1, golden=golden)
        helpers.deploy(ctl, f"{name}:1.2.0", fleet)
        passed = helpers.event(ctl, agent.device_id, "health_check_passed", f"{name}:1.2.0")
        assert "3 golden rows pass" in passed

        # golden data as one stream (carry/state): the device feeds its own stateN forward
        streamed = helpers.npz(**feeds.join(steps, feeds.carry_arrays([("state", "stateN")])))
        helpers.release(ctl, name, "1.3.0", model_version=1, golden=streamed)
        helpers.deploy(ctl, f"{name}:1.3.0", fleet)
        passed = helpers.event(ctl, agent.device_id, "health_check_passed", f"{name}:1.3.0")
        assert "8 golden rows pass" in passed


@pytest.mark.slow
def test_vad_through_the_whole_path(
    ctl: support.Running, broker: Broker, tmp_path: Path, silero: bytes
) -> None:
    """Compress with a time budget, release the winner (fp16: its weights inside the If
    branches converted), canary to two real agents, the rollout succeeds, and Predict on each
    device, its recurrent state and sample rate given, is what ONNX Runtime computes."""
    probe = {
        "input": audio(2)[1:],
        "state": np.random.default_rng(4).uniform(-0.5, 0.5, (2, 1, 128)).astype(np.float32),
        "sr": np.array(16000, np.int64),
    }
    path = helpers.whole_path(
        ctl, broker, tmp_path, silero, {"input": audio(8), **shared()}, probe,
        name="vad", recipe="int8-dynamic,fp16", max_drop=5.0,
    )  # fmt: skip
    assert path.report["metric"] == "max-abs-error"
    assert path.result.passed, [c.verdict for c in path.result.candidates]
    assert path.release.endswith(":2.0.0")  # the winner shipped, not the original
    assert path.shipped.deployed, path.shipped.why
    assert path.shipped.predict_matches, path.shipped.predict_error
