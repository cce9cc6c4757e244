"""Bad releases for the health tests, each built from the trained digits model, and golden data.

Every model here has the digits signature (``pixels`` float32[N, 64] -> ``probabilities``
float32[N, 10], ``label`` int64[N]) and passes ``onnx.checker``; ``test_health_models`` checks
that each one really misbehaves the way its name says:

* ``wrong_answers``: the final layer negated, so the top class is (nearly) never right;
* ``nan_scores``: the right labels, but scores that are NaN (``Sqrt`` of -1 added to them);
* ``unloadable``: a Softmax with an axis out of range, which ONNX Runtime refuses to load;
* ``slow``: a stack of wide MatMuls whose cost grows with the batch;
* ``quadratic``: the right answers, at a cost that grows with the square of the batch;
* ``batch_of_one``: a Reshape to [1, 64] that fails in ONNX Runtime for any batch but one.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgefleet.demo import digits

Array = npt.NDArray[Any]
OPSET = digits.OPSET


def weights(model: bytes) -> dict[str, Array]:
    graph = onnx.load_model_from_string(model).graph
    return {init.name: numpy_helper.to_array(init) for init in graph.initializer}


def _model(nodes: list[onnx.NodeProto], initializers: dict[str, Array]) -> bytes:
    graph = helper.make_graph(
        nodes,
        "fault",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 64])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
        ],
        [numpy_helper.from_array(v, k) for k, v in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _mlp(
    *, before: Sequence[onnx.NodeProto] = (), source: str = "pixels", softmax_axis: int = 1
) -> list[onnx.NodeProto]:
    return [
        *before,
        helper.make_node("Gemm", [source, "w1", "b1"], ["h_pre"]),
        helper.make_node("Relu", ["h_pre"], ["h"]),
        helper.make_node("Gemm", ["h", "w2", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["scores"], axis=softmax_axis),
        helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
    ]


def _identity_scores() -> onnx.NodeProto:
    return helper.make_node("Identity", ["scores"], ["probabilities"])


def wrong_answers(model: bytes) -> bytes:
    w = weights(model)
    return digits.to_onnx(w["w1"], w["b1"], -w["w2"], -w["b2"], name="digits-wrong")


def nan_scores(model: bytes) -> bytes:
    w = weights(model)
    w["minus_one"] = np.array([-1.0], np.float32)
    nodes = [
        *_mlp(),
        helper.make_node("Sqrt", ["minus_one"], ["nan"]),
        helper.make_node("Add", ["scores", "nan"], ["probabilities"]),
    ]
    return _model(nodes, w)


def unloadable(model: bytes) -> bytes:
    return _model([*_mlp(softmax_axis=5), _identity_scores()], weights(model))


def batch_of_one(model: bytes) -> bytes:
    w = weights(model)
    w["one_row"] = np.array([1, 64], np.int64)
    before = [helper.make_node("Reshape", ["pixels", "one_row"], ["row"])]
    return _model([*_mlp(before=before, source="row"), _identity_scores()], w)


def quadratic(model: bytes) -> bytes:
    """The right answers, at a cost that grows with the square of the batch (a Gram matrix of
    the rows, times zero, is added to the logits): fast for one row, slow for thousands."""
    w = weights(model)
    w["zero"] = np.array([0.0], np.float32)
    nodes = [
        helper.make_node("Gemm", ["pixels", "w1", "b1"], ["h_pre"]),
        helper.make_node("Relu", ["h_pre"], ["h"]),
        helper.make_node("Gemm", ["h", "w2", "b2"], ["raw"]),
        helper.make_node("Gemm", ["pixels", "pixels"], ["gram"], transB=1),
        helper.make_node("ReduceMean", ["gram"], ["row_mean"], keepdims=1),
        helper.make_node("Mul", ["row_mean", "zero"], ["nothing"]),
        helper.make_node("Add", ["raw", "nothing"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
    ]
    return _model(nodes, w)


def slow(*, width: int = 1024, layers: int = 6, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    scale = 1.0 / np.sqrt(width)
    inits: dict[str, Array] = {"w_in": rng.normal(0, 0.1, (64, width)).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["pixels", "w_in"], ["x0"])]
    for i in range(layers):
        inits[f"w{i}"] = rng.normal(0, scale, (width, width)).astype(np.float32)
        nodes.append(helper.make_node("MatMul", [f"x{i}", f"w{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [f"x{i + 1}"]))
    inits["w_out"] = rng.normal(0, scale, (width, 10)).astype(np.float32)
    nodes += [
        helper.make_node("MatMul", [f"x{layers}", "w_out"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
    ]
    return _model(nodes, inits)


# --- measuring ---------------------------------------------------------------------------------


def session(model: bytes) -> ort.InferenceSession:
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"])


def run(model: bytes, pixels: Array) -> dict[str, Array]:
    s = session(model)
    names = [o.name for o in s.get_outputs()]
    return dict(zip(names, s.run(names, {"pixels": pixels}), strict=True))


def macs(model: bytes, batch: int) -> int:
    """Multiply-accumulates of the model's Gemm/MatMul nodes for ``batch`` rows: its cost, by
    shape inference, the same on every machine (a timing would not be)."""
    proto = onnx.load_model_from_string(model)
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = batch
    graph = onnx.shape_inference.infer_shapes(proto, strict_mode=True).graph
    known = {v.name: v for v in [*graph.input, *graph.value_info, *graph.output]}
    shapes = {n: [d.dim_value for d in v.type.tensor_type.shape.dim] for n, v in known.items()}
    shapes |= {i.name: list(i.dims) for i in graph.initializer}
    total = 0
    for node in graph.node:
        if node.op_type not in ("Gemm", "MatMul"):
            continue
        a = shapes[node.input[0]]
        inner = a[0] if node.op_type == "Gemm" and helper_attr(node, "transA") else a[-1]
        total += int(np.prod(shapes[node.output[0]])) * inner
    return total


def helper_attr(node: onnx.NodeProto, name: str) -> int:
    return next((int(helper.get_attribute_value(a)) for a in node.attribute if a.name == name), 0)


def golden_npz(inputs: dict[str, Array], expected: dict[str, Array] | None = None) -> bytes:
    arrays = {f"input/{k}": v for k, v in inputs.items()}
    arrays |= {f"expected/{k}": v for k, v in (expected or {}).items()}
    buf = io.BytesIO()
    cast(Any, np.savez)(buf, **arrays)  # numpy's stubs take no **arrays
    return buf.getvalue()
