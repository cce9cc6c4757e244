"""Weights inside ``If`` bodies (Silero VAD keeps all of its there): int8-dynamic and fp16
quantize them, and what a pass leaves in float is said in its record or its skip reason.

Small models built with ``onnx.helper``; the tests read the graphs the passes wrote (ops and
initializer types inside each branch), never a CPU-dependent accuracy figure.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefleet.controller.compress import (
    clustering,
    dynamic_quant,
    fp16,
    graphs,
    int4,
    lowrank,
    pruning,
    structured,
)
from edgefleet.controller.compress.errors import PassSkippedError
from edgefleet.controller.compress.records import Compressed, Technique


def _branch(name: str, weight: np.ndarray, *, as_constant: bool) -> onnx.GraphProto:
    """``y = x @ W`` reading the outer ``x``; W a Constant node (as exporters inline it) or an
    initializer of the branch."""
    w = numpy_helper.from_array(weight, f"{name}_w")
    nodes = [helper.make_node("MatMul", ["x", w.name], [f"{name}_y"], name=f"{name}_matmul")]
    if as_constant:
        nodes.insert(0, helper.make_node("Constant", [], [w.name], value=w))
    out = helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, None)
    return helper.make_graph(nodes, name, [], [out], initializer=[] if as_constant else [w])


def if_matmul_model() -> bytes:
    rng = np.random.default_rng(0)
    then = _branch("then", rng.standard_normal((64, 32)).astype(np.float32), as_constant=True)
    other = _branch("else", rng.standard_normal((64, 32)).astype(np.float32), as_constant=False)
    node = helper.make_node(
        "If", ["flag"], ["y"], name="choose", then_branch=then, else_branch=other
    )
    graph = helper.make_graph(
        [node],
        "if-matmul",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64]),
            helper.make_tensor_value_info("flag", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def if_conv_model() -> bytes:
    """The only weight is a Conv's, inside an If branch: int8-dynamic keeps Conv in float."""
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    conv = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv")],
        "then",
        [],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, None)],
        initializer=[w],
    )
    same = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["i"])],
        "else",
        [],
        [helper.make_tensor_value_info("i", TensorProto.FLOAT, None)],
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["flag"], ["y"], then_branch=conv, else_branch=same)],
        "if-conv",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8]),
            helper.make_tensor_value_info("flag", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString()


def _branches(data: bytes) -> dict[str, onnx.GraphProto]:
    model = onnx.load_model_from_string(data)
    (node,) = [n for n in model.graph.node if n.op_type == "If"]
    return {a.name: a.g for a in node.attribute}


def _feed(flag: bool) -> dict[str, np.ndarray]:
    x = np.random.default_rng(1).standard_normal((4, 64)).astype(np.float32)
    return {"x": x, "flag": np.array(flag)}


def test_int8_dynamic_quantizes_the_matmuls_inside_both_if_branches() -> None:
    original = if_matmul_model()
    # The traps: without EnableSubgraph ORT leaves the If bodies in float; with it, it appends
    # the DynamicQuantizeLinear of x after the If that reads it (onnx.checker refuses that).
    out = dynamic_quant.quantize_int8_dynamic(original)
    onnx.checker.check_model(onnx.load_model_from_string(out.model))
    main = {n.op_type for n in onnx.load_model_from_string(out.model).graph.node}
    assert "DynamicQuantizeLinear" in main  # x is read by both branches: quantized once, outside
    for name, branch in _branches(out.model).items():
        ops = {n.op_type for n in branch.node}
        assert "MatMulInteger" in ops and "MatMul" not in ops, name
        types = {t.name: t.data_type for t in branch.initializer}
        weight = f"{name.removesuffix('_branch')}_w_quantized"
        assert types[weight] == TensorProto.INT8, (name, types)
        assert TensorProto.FLOAT not in {
            types[n.input[1]] for n in branch.node if n.op_type == "MatMulInteger"
        }
    assert sorted(c.layer for c in out.record.layers) == ["else_matmul", "then_matmul"]
    assert out.record.size_after < out.record.size_before
    assert any("2 layers inside If subgraphs quantized" in n for n in out.record.notes)
    session = graphs.session(out.model)  # loads and runs either branch in ONNX Runtime
    for flag in (True, False):
        (y,) = session.run(None, _feed(flag))
        assert y.shape == (4, 32)


def test_fp16_converts_the_weights_inside_if_branches() -> None:
    out = fp16.convert_fp16(if_matmul_model())
    graphs.validate_model(out.model, [_feed(True)])  # onnx.checker and a run in ORT
    for name, branch in _branches(out.model).items():
        weights = [t for t in branch.initializer if t.name.endswith("_w")]
        assert [t.data_type for t in weights] == [TensorProto.FLOAT16], name
    assert sorted(c.layer for c in out.record.layers) == ["else_matmul", "then_matmul"]
    assert any("inside If subgraphs converted" in n for n in out.record.notes)
    inputs = onnx.load_model_from_string(out.model).graph.input
    assert inputs[0].type.tensor_type.elem_type == TensorProto.FLOAT  # io types kept


def test_a_conv_inside_an_if_branch_is_left_in_float_with_the_reason() -> None:
    with pytest.raises(PassSkippedError, match="inside If subgraphs, left in float") as err:
        dynamic_quant.quantize_int8_dynamic(if_conv_model())
    assert err.value.technique is Technique.INT8_DYNAMIC


def test_constants_inside_subgraphs_become_initializers_of_their_branch() -> None:
    model = graphs.load(if_matmul_model())
    then = _branches(model.SerializeToString())["then_branch"]
    assert [n.op_type for n in then.node] == ["MatMul"]
    assert [t.name for t in then.initializer] == ["then_w"]
    onnx.checker.check_model(model)


@pytest.mark.parametrize(
    "compress",
    [
        int4.quantize_int4_weights,
        clustering.cluster_weights,
        lambda m: pruning.prune_magnitude(m, sparsity=0.5),
        lambda m: structured.prune_structured(m, amount=0.5),
        lowrank.factorise_lowrank,
    ],
    ids=["int4-weights", "cluster", "prune", "prune-structured", "lowrank"],
)
def test_passes_that_work_on_the_main_graph_say_the_if_weights_stay_in_float(
    compress: Callable[[bytes], Compressed],
) -> None:
    with pytest.raises(PassSkippedError, match="inside If subgraphs, left in float"):
        compress(if_matmul_model())
