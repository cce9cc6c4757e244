"""The agent's pre-activation check on models that zeros with dynamic dimensions 1 break: a
larger smoke input where one runs, the check skipped (and said) where none does, and golden
data with broadcast inputs and per-output tolerances run the way the controller made it."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgefleet.agent import checking
from edgefleet.agent import goldenset as g
from edgefleet.agent.runtime import LoadedModel, ModelRuntime, spec_of
from edgefleet.common import types as t


def runtime(path: Path, model: bytes) -> ModelRuntime:
    path.write_bytes(model)
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    manifest = t.Manifest(
        name="m",
        version="1.0.0",
        model_digest="sha256:" + "0" * 64,
        model_size=len(model),
        inputs=tuple(spec_of(i) for i in session.get_inputs()),
        outputs=tuple(spec_of(o) for o in session.get_outputs()),
    )
    return ModelRuntime.load(path, LoadedModel("m:1.0.0", "g1", manifest, "sha256:x"))


def reflect_padded() -> bytes:
    """A reflect Pad by 1 on a dynamic axis: refuses length 1, runs from 2 on."""
    graph = helper.make_graph(
        [helper.make_node("Pad", ["x", "pads"], ["y"], mode="reflect")],
        "reflect",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "t"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "t2"])],
        [numpy_helper.from_array(np.array([0, 1, 0, 1], np.int64), "pads")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def ticks() -> Callable[[], float]:
    """A clock that moves 1 ms a reading: no verdict depends on this machine's speed."""
    counter = itertools.count()
    return lambda: next(counter) / 1000


def test_a_model_that_refuses_dimension_one_gets_a_larger_smoke_input(tmp_path: Path) -> None:
    rt = runtime(tmp_path / "m.onnx", reflect_padded())
    feed, outputs, why = checking.smoke_feed(rt)
    assert feed is not None and feed["x"].shape == (2, 2) and why == ""
    assert outputs["y"].shape == (2, 4)
    exam = checking.examine(rt, None, t.HealthPolicy(), timer=ticks())
    assert exam.output_problems == () and exam.note == "" and exam.latency.samples > 0


def test_a_model_no_zeros_input_runs_is_not_judged_on_outputs_and_says_why(
    tmp_path: Path, silero: bytes
) -> None:
    rt = runtime(tmp_path / "vad.onnx", silero)
    exam = checking.examine(rt, None, t.HealthPolicy(), timer=ticks())
    assert exam.output_problems == ()
    assert exam.note.startswith("smoke inference skipped") and "golden data" in exam.note


def test_golden_rows_with_broadcast_inputs_and_tolerances(tmp_path: Path, silero: bytes) -> None:
    rt = runtime(tmp_path / "vad.onnx", silero)
    rng = np.random.default_rng(0)
    rows = rng.uniform(-0.3, 0.3, (3, 512)).astype(np.float32)
    shared = {"state": np.zeros((2, 1, 128), np.float32), "sr": np.array(16000, np.int64)}
    session = ort.InferenceSession(silero, providers=["CPUExecutionProvider"])
    runs = [session.run(None, {"input": rows[i : i + 1]} | shared) for i in range(3)]
    expected = {
        "output": np.concatenate([r[0] for r in runs]),
        "stateN": np.concatenate([r[1] for r in runs]),
    }
    golden = g.GoldenSet({"input": rows}, expected, shared, {"output": 1e-3, "stateN": 1e-3})
    policy = t.HealthPolicy()
    assert checking.output_problems(rt, golden, policy) == []
    off = {"output": expected["output"] + 0.01, "stateN": expected["stateN"]}
    problems = checking.output_problems(rt, g.GoldenSet({"input": rows}, off, shared), policy)
    assert problems and "'output'" in problems[0]
    within = g.GoldenSet({"input": rows}, off, shared, {"output": 0.02})
    assert checking.output_problems(rt, within, policy) == []
