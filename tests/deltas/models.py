"""A model worth chunking: a stack of 256x256 MatMul layers (~2 MiB of float32 initializers),
and its fine-tune that changes one layer's weights, as real ONNX files."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from edgefleet.common import types as t

LAYERS = 8
WIDTH = 256
INPUTS = (t.TensorSpec("x", "float32", (-1, WIDTH)),)
OUTPUTS = (t.TensorSpec(f"h{LAYERS - 1}", "float32", (-1, WIDTH)),)


def mlp(*, tuned_layer: int | None = None, seed: int = 1) -> bytes:
    """The serialized model; ``tuned_layer``: that layer's weights nudged (a one-layer
    fine-tune), every other initializer as in the base model."""
    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for i in range(LAYERS):
        w = (rng.standard_normal((WIDTH, WIDTH)) / WIDTH).astype(np.float32)
        if i == tuned_layer:
            w = w + np.float32(0.001)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"]))
        prev = f"h{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, WIDTH])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [None, WIDTH])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())
