"""4-bit weight-only quantization of MatMul with ONNX Runtime's ``MatMulNBitsQuantizer``.

ORT's quantizer handles MatMul only, so a Gemm with constant weights is first rewritten as
MatMul + Add (transB folded into the weight, alpha/beta into weight and bias); Conv stays fp32.
Weights become 4-bit blocks (``block_size`` values share a scale) run by ORT's MatMulNBits
kernel. ORT's quantizer needs the ``onnx-ir`` package; without it the pass is skipped.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from . import graphs
from .errors import PassSkippedError
from .records import Compressed, LayerChange, PassRecord, Technique, shape_text

TOOL = "onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer"


def quantize_int4_weights(model: bytes, *, block_size: int = 32) -> Compressed:
    try:
        with graphs.quiet():  # the module calls logging.basicConfig(level=INFO) on import
            from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    except ImportError as exc:
        raise PassSkippedError(
            Technique.INT4_WEIGHTS, f"ORT's MatMulNBitsQuantizer cannot be imported: {exc}"
        ) from exc
    proto = graphs.load(model)
    notes: list[str] = []
    rewritten = gemm_to_matmul(proto)
    if rewritten:
        notes.append(f"Gemm rewritten as MatMul + Add for MatMulNBits: {', '.join(rewritten)}")
    if any(n.op_type == "Conv" for n in proto.graph.node):
        notes.append("Conv left in fp32: MatMulNBits covers MatMul only")
    eligible = [
        w
        for w in graphs.weight_layers(proto, ops=("MatMul",))
        if len(w.shape) == 2 and w.shape[0] >= block_size
    ]
    if not eligible:
        raise PassSkippedError(
            Technique.INT4_WEIGHTS,
            f"no MatMul with a 2-D constant weight of at least {block_size} rows"
            + graphs.subgraph_note(proto),
        )
    with graphs.quiet():
        try:
            quantizer = MatMulNBitsQuantizer(
                proto, bits=4, block_size=block_size, is_symmetric=True
            )
            quantizer.process()
        except Exception as exc:  # ORT's tools fail in many ways on real exports
            raise PassSkippedError(
                Technique.INT4_WEIGHTS, f"MatMulNBitsQuantizer failed: {_first(exc)}"
            ) from exc
    data = graphs.dump(quantizer.model.model)
    graphs.check_runs(data, Technique.INT4_WEIGHTS)
    done = {
        n.name.removesuffix("_Q4")
        for n in graphs.load(data).graph.node
        if n.op_type == "MatMulNBits"
    }
    layers = tuple(
        LayerChange(w.node, f"fp32 {shape_text(w.shape)}", f"int4 blocks of {block_size}")
        for w in eligible
        if w.node in done
    )
    return Compressed(
        data,
        PassRecord(
            Technique.INT4_WEIGHTS,
            {"bits": 4, "block_size": block_size, "symmetric": True},
            TOOL,
            len(model),
            len(data),
            layers,
            tuple(notes),
        ),
    )


def gemm_to_matmul(model: onnx.ModelProto) -> list[str]:
    """Rewrite, in place, each Gemm(A, constant B[, C]) with transA=0 as MatMul (+ Add)."""
    inits = graphs.initializers(model)
    done: list[str] = []
    nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        if (
            node.op_type != "Gemm"
            or node.input[1] not in inits
            or graphs.attr(node, "transA", 0)
            or (len(node.input) > 2 and node.input[2] and node.input[2] not in inits)
        ):
            nodes.append(node)
            continue
        w = graphs.array(inits[node.input[1]]).astype(np.float32)
        if graphs.attr(node, "transB", 0):
            w = w.T
        w = w * np.float32(graphs.attr(node, "alpha", 1.0))
        weight = f"{node.name}.matmul_weight"
        model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w), weight))
        if len(node.input) > 2 and node.input[2]:
            bias = graphs.array(inits[node.input[2]]) * np.float32(graphs.attr(node, "beta", 1.0))
            model.graph.initializer.append(
                numpy_helper.from_array(bias.astype(np.float32), f"{node.name}.add_bias")
            )
            mid = f"{node.output[0]}.matmul"
            nodes.append(helper.make_node("MatMul", [node.input[0], weight], [mid], node.name))
            nodes.append(
                helper.make_node(
                    "Add", [mid, f"{node.name}.add_bias"], [node.output[0]], f"{node.name}.add"
                )
            )
        else:
            nodes.append(
                helper.make_node("MatMul", [node.input[0], weight], [node.output[0]], node.name)
            )
        done.append(node.name)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    _drop_unused(model)
    return done


def _drop_unused(model: onnx.ModelProto) -> None:
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
