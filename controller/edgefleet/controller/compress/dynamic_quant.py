"""int8 dynamic quantization with ONNX Runtime's ``quantize_dynamic``, its traps handled.

Two traps are detected before calling ORT, not discovered by a crash later:

* ``Conv`` becomes ``ConvInteger(uint8, int8)``, which older ORT CPU builds cannot run and
  newer ones run slowly (ORT 1.32 here: 2.5x slower than fp32 on the digits CNN); an
  agent's ORT may be older than the controller's, so Conv layers are left in
  fp32, the record says so, and the result is checked to hold no ConvInteger (int8 Conv is the
  static pass's job).
* a weight that is not a plain initializer (an ``Identity``, ``Transpose`` or ``Cast`` of one;
  ``Constant`` nodes are already turned into initializers by ``graphs.load``) is not quantized
  unless the model is pre-processed, so such models go through ``quant_pre_process`` first,
  which folds those constants into initializers.
* weights inside ``If``/``Loop``/``Scan`` bodies (Silero VAD keeps all of its there) are left in
  float unless ORT is asked (``EnableSubgraph``); it then appends the DynamicQuantizeLinear of
  an outer-scope input after the node that reads it, so the result is topologically sorted and
  must pass ``onnx.checker``. The record says how many layers inside bodies were quantized and
  how many left in float.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import onnx

from . import graphs
from .errors import InvalidInputError, PassSkippedError
from .records import Compressed, LayerChange, PassRecord, Technique

TOOL = "onnxruntime.quantization.quantize_dynamic"


def quantize_int8_dynamic(model: bytes, *, per_channel: bool = False) -> Compressed:
    proto = graphs.load(model)
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    notes: list[str] = []
    has_conv = any(n.op_type == "Conv" for g in graphs.all_graphs(proto) for n in g.node)
    held = graphs.subgraph_ops(proto)
    op_types = [op for op in IntegerOpsRegistry if op != "Conv"] + ["Gemm"]
    if has_conv:
        notes.append(
            "Conv left in fp32: dynamic quantization makes ConvInteger(uint8, int8), which "
            "older ONNX Runtime CPU builds cannot run and newer ones run slowly; "
            "int8-static quantizes Conv"
        )
    if derived_weights(proto):
        proto = pre_process(proto, notes, why="weights were not plain initializers")
    before = {
        w.weight: w for w in graphs.weight_layers(proto, ops=("MatMul", "Gemm"), subgraphs=True)
    }
    if not before:
        raise PassSkippedError(
            Technique.INT8_DYNAMIC,
            f"no MatMul/Gemm with constant weights (ops: {_ops(proto)})"
            + graphs.subgraph_note(proto),
        )
    with tempfile.TemporaryDirectory(prefix="ef-dq-") as tmp, graphs.quiet():
        out = Path(tmp) / "q.onnx"
        try:
            quantize_dynamic(
                proto,
                out,
                per_channel=per_channel,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=op_types,
                # If/Loop/Scan bodies are quantized too (ORT leaves them in float without it)
                extra_options={"EnableSubgraph": bool(held)},
            )
        except Exception as exc:  # ORT's tools fail in many ways on real exports
            raise PassSkippedError(
                Technique.INT8_DYNAMIC, f"quantize_dynamic failed: {_first(exc)}"
            ) from exc
        data = out.read_bytes()
    if held:  # ORT appends the DynamicQuantizeLinear of an outer name a body reads after the If
        result = graphs.load(data)
        graphs.toposort(result)
        data = graphs.dump(result)
        try:
            graphs.validate_model(data)
        except InvalidInputError as exc:
            raise PassSkippedError(Technique.INT8_DYNAMIC, str(exc)) from exc
    if any(  # pragma: no cover
        n.op_type == "ConvInteger" for g in graphs.all_graphs(graphs.load(data)) for n in g.node
    ):
        raise PassSkippedError(Technique.INT8_DYNAMIC, "result holds ConvInteger")
    graphs.check_runs(data, Technique.INT8_DYNAMIC)
    result = graphs.load(data)
    quantized = {t.name for g in graphs.all_graphs(result) for t in g.initializer}
    layers = tuple(
        LayerChange(w.node, f"fp32 {w.shape}", "int8")
        for name, w in before.items()
        if f"{name}_quantized" in quantized
    )
    if not layers:
        raise PassSkippedError(
            Technique.INT8_DYNAMIC,
            "quantize_dynamic quantized no layer" + graphs.subgraph_note(proto),
        )
    if held:
        notes.extend(_subgraph_notes(proto, quantized, held))
    return Compressed(
        data,
        PassRecord(
            Technique.INT8_DYNAMIC,
            {"per_channel": per_channel, "weight_type": "int8"},
            TOOL,
            len(model),
            len(data),
            layers,
            tuple(notes),
        ),
    )


def _subgraph_notes(proto: onnx.ModelProto, quantized: set[str], held: list[str]) -> list[str]:
    """What became of the weight layers inside If/Loop/Scan bodies: quantized or left in float."""
    main = {n.name for n in proto.graph.node}
    inside = [w for w in graphs.weight_layers(proto, subgraphs=True) if w.node not in main]
    done = [w for w in inside if f"{w.weight}_quantized" in quantized]
    kinds = "/".join(held)
    notes = (
        [f"{len(done)} layers inside {kinds} subgraphs quantized (EnableSubgraph)"] if done else []
    )
    left = len(inside) - len(done)
    if left:
        notes.append(f"{left} weight layers inside {kinds} subgraphs left in float")
    return notes


def derived_weights(model: onnx.ModelProto) -> list[str]:
    """Weights of MatMul/Gemm/Conv computed from constants rather than stored as initializers."""
    inits = {t.name for t in model.graph.initializer}
    made = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    made |= {
        n.output[0]
        for n in model.graph.node
        if n.op_type in ("Identity", "Transpose", "Cast") and n.input and n.input[0] in inits
    }
    return [
        n.name
        for n in model.graph.node
        if n.op_type in graphs.WEIGHT_OPS and len(n.input) > 1 and n.input[1] in made
    ]


def pre_process(model: onnx.ModelProto, notes: list[str], *, why: str) -> onnx.ModelProto:
    """ORT's ``quant_pre_process``: shape inference and constant folding before quantization."""
    from onnxruntime.quantization import quant_pre_process

    # ORT's symbolic shape inference saves a model that it cannot finish ("Incomplete symbolic
    # shape inference") as sym_shape_infer_temp.onnx plus external data in the working directory:
    # run it in the temporary one (this runs in the compression sandbox's own process).
    with (
        tempfile.TemporaryDirectory(prefix="ef-pre-") as tmp,
        graphs.quiet(),
        contextlib.chdir(tmp),
    ):
        out = Path(tmp) / "pre.onnx"
        failure = ""
        # ORT's graph optimization or symbolic shape inference fail on some exports; retry without.
        for skip_opt, skip_symbolic in ((False, False), (True, False), (True, True)):
            try:
                quant_pre_process(
                    model, out, skip_optimization=skip_opt, skip_symbolic_shape=skip_symbolic
                )
                break
            except Exception as exc:
                failure = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        else:
            notes.append(f"quant_pre_process failed ({failure}); quantized without it")
            return model
        skipped = " without graph optimization" if skip_opt else ""
        notes.append(f"pre-processed with quant_pre_process{skipped} ({why})")
        return graphs.load(out.read_bytes())


def _ops(model: onnx.ModelProto) -> str:
    return ", ".join(sorted(graphs.ops(model)))


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
