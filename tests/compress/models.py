"""Tiny hand-made ONNX models for the traps and bad inputs (each a few nodes, built in ms)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _model(nodes, inputs, outputs, inits) -> bytes:  # type: ignore[no-untyped-def]
    graph = helper.make_graph(nodes, "t", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def depthwise(rng: np.random.Generator) -> bytes:
    """Conv(3x3, 8 channels) -> depthwise Conv whose channels' weight ranges differ 1000x."""
    w1 = rng.standard_normal((8, 1, 3, 3)).astype(np.float32)
    scale = np.logspace(-3, 0, 8).astype(np.float32)[:, None, None, None]
    w2 = (rng.standard_normal((8, 1, 3, 3)).astype(np.float32) * scale).astype(np.float32)
    return _model(
        [
            helper.make_node("Conv", ["x", "w1"], ["a"], "conv", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["a"], ["b"], "relu"),
            helper.make_node("Conv", ["b", "w2"], ["y"], "dw", group=8, pads=[1, 1, 1, 1]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8, 8, 8])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )


def sequence(rng: np.random.Generator) -> bytes:
    """x[1, T, 16] -> MatMul -> Relu -> MatMul: T varies from call to call."""
    w1 = rng.standard_normal((16, 32)).astype(np.float32)
    w2 = rng.standard_normal((32, 8)).astype(np.float32)
    return _model(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], "mm1"),
            helper.make_node("Relu", ["h"], ["r"], "relu"),
            helper.make_node("MatMul", ["r", "w2"], ["y"], "mm2"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "seq", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "seq", 8])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )


def transposed_weight(rng: np.random.Generator) -> bytes:
    """MatMul whose weight is Transpose(initializer): not a plain initializer."""
    w = rng.standard_normal((8, 64)).astype(np.float32)
    return _model(
        [
            helper.make_node("Transpose", ["wt"], ["w"], "t", perm=[1, 0]),
            helper.make_node("MatMul", ["x", "w"], ["y"], "mm"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])],
        [numpy_helper.from_array(w, "wt")],
    )


def einsum_only(rng: np.random.Generator) -> bytes:
    """No Conv/Gemm/MatMul at all: weight passes have nothing to work on."""
    w = rng.standard_normal((64, 10)).astype(np.float32)
    return _model(
        [
            helper.make_node("Einsum", ["x", "w"], ["logits"], "e", equation="ni,ij->nj"),
            helper.make_node("Softmax", ["logits"], ["p"], "s", axis=1),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["n", 10])],
        [numpy_helper.from_array(w, "w")],
    )
