"""Metrics chosen by what an output is, or by --metric; eval and golden data with broadcast
inputs (a scalar, a recurrent state) that have no sample axis."""

from __future__ import annotations

import io

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefleet.common.types import TensorSpec
from edgefleet.controller import releasegolden as release_golden
from edgefleet.controller.compress.errors import InvalidInputError
from edgefleet.controller.compress.evaluating import (
    EvalSet,
    Metric,
    MetricChoice,
    load_eval_set,
    parse_metric,
    reference,
    score,
)
from edgefleet.controller.compress.winnergolden import golden_for

from . import models


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def stateful() -> bytes:
    """y = x * gain + sum(state), stateN = state + 1: a scalar and a [2, 1, 4] state input."""
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "gain"], ["scaled"]),
            helper.make_node("ReduceSum", ["state"], ["total"], keepdims=0),
            helper.make_node("Add", ["scaled", "total"], ["y"]),
            helper.make_node("Add", ["state", "one"], ["stateN"]),
        ],
        "stateful",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4]),
            helper.make_tensor_value_info("gain", TensorProto.FLOAT, []),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, 1, 4]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4]),
            helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, 1, 4]),
        ],
        [numpy_helper.from_array(np.array(1.0, np.float32), "one")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("", MetricChoice()),
        ("auto", MetricChoice()),
        ("cosine", MetricChoice(Metric.COSINE)),
        ("top1", MetricChoice(Metric.TOP1_AGREEMENT)),
        ("mse", MetricChoice(Metric.MSE)),
        ("max-abs", MetricChoice(Metric.MAX_ABS_ERROR)),
        ("y=mse", MetricChoice(Metric.MSE, "y")),
    ],
)
def test_metric_names_parse(text: str, want: MetricChoice) -> None:
    assert parse_metric(text) == want


def test_unknown_metrics_are_refused_with_the_choices() -> None:
    with pytest.raises(InvalidInputError, match="top1, cosine, mse, max-abs"):
        parse_metric("f1")


def test_a_dense_two_d_output_is_scored_by_cosine_and_class_scores_by_top1() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 64)).astype(np.float32)
    dense = models.transposed_weight(rng)  # MatMul -> [N, 8]: an embedding, not class scores
    assert reference(dense, EvalSet.from_arrays({"x": x})).score.metric is Metric.COSINE
    classes = models.einsum_only(rng)  # Softmax -> [N, 10]
    ev = EvalSet.from_arrays({"x": x})
    assert reference(classes, ev).score.metric is Metric.TOP1_AGREEMENT
    chosen = reference(classes, ev, metric=MetricChoice(Metric.MSE))
    assert chosen.score.metric is Metric.MSE
    assert score(classes, ev, chosen).drop == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(InvalidInputError, match="names output 'nope'"):
        reference(classes, ev, metric=MetricChoice(Metric.MSE, "nope"))


def test_eval_data_with_broadcast_inputs_feeds_them_whole_with_every_sample() -> None:
    model = stateful()
    x = np.arange(24, dtype=np.float32).reshape(6, 4)
    state = np.full((2, 1, 4), 0.5, np.float32)
    data = _npz(x=x, gain=np.array(2.0, np.float32), **{"broadcast/state": state})
    ev = load_eval_set(data, model=model)
    assert ev.broadcast == {"gain", "state"} and ev.size == 6 and len(ev.batches) == 6
    assert all(b["state"].shape == (2, 1, 4) and b["gain"].ndim == 0 for b in ev.batches)
    assert ev.head(2).size == 2
    ref = reference(model, ev)
    assert score(model, ev, ref).drop == pytest.approx(0.0, abs=1e-9)


def test_golden_data_with_broadcast_inputs_survives_the_release_check() -> None:
    model = stateful()
    x = np.arange(24, dtype=np.float32).reshape(6, 4)
    ev = EvalSet.from_arrays(
        {"x": x, "gain": np.array(2.0, np.float32)},
        broadcast={"state": np.zeros((2, 1, 4), np.float32)},
    )
    golden = golden_for(model, model, ev, count=3)
    assert golden.holds and golden.rows == 3 and set(golden.broadcast) == {"gain", "state"}
    assert set(golden.tolerances) == {"y", "stateN"}
    assert golden.outputs["stateN"].shape == (6, 1, 4)  # three runs joined on the first axis
    # the release path: output/ becomes expected/, the rest is checked against the signature
    arrays = {
        ("expected/" + k.removeprefix("output/")) if k.startswith("output/") else k: v
        for k, v in np.load(io.BytesIO(golden.to_npz())).items()
        if k != "tolerance"
    }
    specs_in = [
        TensorSpec("x", "float32", (-1, 4)),
        TensorSpec("gain", "float32", ()),
        TensorSpec("state", "float32", (2, 1, 4)),
    ]
    specs_out = [TensorSpec("y", "float32", (-1, 4)), TensorSpec("stateN", "float32", (2, 1, 4))]
    normalized = release_golden.normalize(
        _npz(**arrays), model=model, inputs=specs_in, outputs=specs_out
    )
    with np.load(io.BytesIO(normalized)) as npz:
        assert npz["broadcast/gain"].shape == ()  # a scalar stays a scalar
        assert float(npz["tolerance/y"]) == golden.tolerances["y"]
    bad = dict(arrays) | {"broadcast/state": np.zeros((2, 2, 4), np.float32)}
    with pytest.raises(InvalidInputError, match="broadcast input 'state'"):
        release_golden.normalize(_npz(**bad), model=model, inputs=specs_in, outputs=specs_out)
