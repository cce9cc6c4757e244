"""fp16 conversion with ONNX Runtime's own converter (``onnxruntime.transformers.float16``).

Inputs and outputs keep their fp32 types (``keep_io_types``), so callers feed the same arrays.
The converter appends its Casts at the end of the graph; the result is topologically sorted
(``graphs.toposort``) and must pass ``onnx.checker``, else the pass is skipped with the reason.
Weights inside ``If``/``Loop``/``Scan`` bodies (Silero VAD keeps all of its there) are converted
too: the converter walks the subgraphs.
Halves the weights; on CPUs without native fp16 arithmetic ORT computes through Casts and the
model is usually slower, which the search measures rather than assumes.
"""

from __future__ import annotations

import onnx

from . import graphs
from .errors import InvalidInputError, PassSkippedError
from .records import Compressed, LayerChange, PassRecord, Technique, shape_text

TOOL = "onnxruntime.transformers.float16.convert_float_to_float16"


def convert_fp16(model: bytes) -> Compressed:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    proto = graphs.load(model)
    layers = graphs.weight_layers(proto, subgraphs=True)  # the converter walks If/Loop bodies
    if not graphs.float_weights(proto):
        raise PassSkippedError(
            Technique.FP16, "the model has no fp32 weights" + graphs.subgraph_note(proto)
        )
    with graphs.quiet():
        try:
            converted = convert_float_to_float16(proto, keep_io_types=True)
        except Exception as exc:  # ORT's tools fail in many ways on real exports
            raise PassSkippedError(
                Technique.FP16, f"convert_float_to_float16 failed: {_first(exc)}"
            ) from exc
    graphs.toposort(converted)
    data = graphs.dump(converted)
    try:
        graphs.validate_model(data)
    except InvalidInputError as exc:
        raise PassSkippedError(Technique.FP16, str(exc)) from exc
    return Compressed(
        data,
        PassRecord(
            Technique.FP16,
            {"keep_io_types": True},
            TOOL,
            len(model),
            len(data),
            tuple(LayerChange(w.node, f"fp32 {shape_text(w.shape)}", "fp16") for w in layers),
            (
                "fp16 on a CPU computes through Casts; it pays off only where fp16 is native",
                *_inside(proto),
            ),
        ),
    )


def _inside(proto: onnx.ModelProto) -> tuple[str, ...]:
    held = graphs.subgraph_ops(proto)
    return (f"weights inside {'/'.join(held)} subgraphs converted too",) if held else ()


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
