"""Tiny ONNX models built in code for tests that need a model but not what it computes."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper


def matmul_chain(size: int = 8, *, scale: float = 1.0, depth: int = 1, tag: str = "") -> bytes:
    """x[N,size] -> y[N,size] through ``depth`` MatMuls by ``scale`` * I (a deeper chain is
    slower to run; another ``tag`` gives other bytes for the same graph)."""
    w = helper.make_tensor(
        "w", TensorProto.FLOAT, [size, size], (np.eye(size, dtype=np.float32) * scale).ravel()
    )
    nodes, prev = [], "x"
    for i in range(depth):
        out = "y" if i == depth - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [prev, "w"], [out]))
        prev = out
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", size])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model.doc_string = tag
    onnx.checker.check_model(model)
    return model.SerializeToString()
