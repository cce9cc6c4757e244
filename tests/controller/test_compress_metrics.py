"""``CompressModel`` with a chosen metric through a real controller: ``y=iou:0.5`` on a
probability-map model, and a user's metric module sent as source text and run in the
compression sandbox's confined worker; the result names the metric of each judged output."""

from __future__ import annotations

import io
import json
from typing import Any

import grpc
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefleet.demo import digits
from edgefleet.v1 import controller_pb2 as pb
from tests.controller import support

DEADLINE = 120.0


def _npz(**arrays: Any) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _compress(ctl: support.Running, **fields: object) -> pb.CompressResult:
    request = pb.CompressRequest(**fields)  # type: ignore[arg-type]
    stream = list(ctl.stub.CompressModel(request, timeout=DEADLINE))
    assert stream[-1].WhichOneof("update") == "result"
    return stream[-1].result


def _detector() -> bytes:
    """A text-detector-like head: x [N, 3, 8, 8] -> Conv 3x3 (32) -> Relu -> Conv 3x3 (32) ->
    Relu -> Conv 1x1 -> y = Sigmoid [N, 1, 8, 8] (weights large enough for fp16 to pay)."""
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((32, 3, 3, 3)) / 5).astype(np.float32)
    w2 = (rng.standard_normal((32, 32, 3, 3)) / 17).astype(np.float32)
    w3 = (rng.standard_normal((1, 32, 1, 1)) / 6).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["a"], ["ar"]),
            helper.make_node("Conv", ["ar", "w2"], ["b"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["b"], ["br"]),
            helper.make_node("Conv", ["br", "w3"], ["z"]),
            helper.make_node("Sigmoid", ["z"], ["y"]),
        ],
        "detector",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1, 8, 8])],
        [numpy_helper.from_array(w, n) for w, n in ((w1, "w1"), (w2, "w2"), (w3, "w3"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def test_iou_on_a_probability_map_is_used_and_named(ctl: support.Running) -> None:
    name = support.unique("detector")
    support.upload(ctl.stub, name, _detector())
    x = np.random.default_rng(1).standard_normal((16, 3, 8, 8)).astype(np.float32)
    result = _compress(
        ctl,
        name=name,
        recipe="fp16",
        eval_data=_npz(x=x),
        max_accuracy_drop=5.0,
        search_objective=pb.OBJECTIVE_SIZE,
        metric="y=iou:0.5",
    )
    assert result.original.metric == "iou>0.5" and result.original.value == 1.0
    assert [(o.output, o.metric) for o in result.original.outputs] == [("y", "iou>0.5")]
    (fp16,) = result.candidates
    assert fp16.metric == "iou>0.5" and 0.9 <= fp16.value <= 1.0, fp16.verdict
    assert [o.output for o in fp16.outputs] == ["y"]
    assert result.passed and result.winner == "fp16"
    report = json.loads(result.report_json)
    assert report["metrics"] == {"y": "iou>0.5"}
    assert "Metric per output: `y`: iou>0.5." in result.report_markdown


METRIC_MODULE = '''
import numpy as np

def same_label(reference, candidate):
    """The share of samples whose predicted label is the original's."""
    return float(np.mean(reference["label"] == candidate["label"]))

def snoop(reference, candidate):
    return float(len(open("/etc/hostname").read()) > 0)
'''


def test_a_metric_module_judges_the_search_in_the_sandbox(
    ctl: support.Running, digits_model: digits.TrainedModel, digits_data: digits.DigitsData
) -> None:
    name = support.unique("digits")
    support.upload(ctl.stub, name, digits_model.onnx_bytes)
    fields = {
        "name": name,
        "recipe": "int8-dynamic",
        "eval_data": _npz(pixels=digits_data.x_test),  # no labels: fidelity to the original
        "max_accuracy_drop": 5.0,
        "search_objective": pb.OBJECTIVE_SIZE,
        "metric_module_source": METRIC_MODULE,
        "metric_module_origin": "labels.py",
    }
    result = _compress(ctl, **fields, metric_module_function="same_label")
    judged = [(o.output, o.metric) for o in result.original.outputs]
    assert judged == [("*", "metric-module labels.py:same_label")]
    assert result.original.value == 1.0
    (int8,) = result.candidates
    assert int8.metric == "metric-module labels.py:same_label" and 0.9 <= int8.value <= 1.0, (
        int8.verdict
    )
    assert result.passed
    assert json.loads(result.report_json)["metrics"] == {"*": "metric-module labels.py:same_label"}

    # the user's code cannot read the controller's files: the search fails, saying why
    with pytest.raises(grpc.RpcError) as raised:
        _compress(ctl, **fields, metric_module_function="snoop")
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "PermissionError" in str(raised.value.details()) and "labels.py" in str(raised.value)
