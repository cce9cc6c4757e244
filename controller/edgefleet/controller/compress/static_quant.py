"""int8 static quantization (QDQ) with ONNX Runtime's ``quantize_static`` and calibration data.

Calibration method MinMax, Entropy or Percentile; per-channel weights by default. Traps:

* per-tensor weight scales collapse depthwise convolutions (one scale for channels whose ranges
  differ by orders of magnitude rounds the small ones to zero): a model with a depthwise Conv
  gets per-channel weights whatever was asked, and the record says so;
* ORT's histogram calibrators (Entropy, Percentile) stack every batch's activations with
  ``np.asarray`` and fail when batches differ in shape (sequences of varying length, a short
  last batch); such calibration data is fed one batch per collection (``CalibStridedMinMax=1``,
  which makes ORT merge histograms batch by batch) instead.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from . import evaluating, graphs
from .dynamic_quant import pre_process
from .errors import PassSkippedError
from .graphs import Feed
from .records import Compressed, LayerChange, PassRecord, Technique, shape_text

TOOL = "onnxruntime.quantization.quantize_static"


class CalibrationMethod(StrEnum):
    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"


def quantize_int8_static(
    model: bytes,
    calibration: Sequence[Feed],
    *,
    method: CalibrationMethod = CalibrationMethod.MINMAX,
    per_channel: bool = True,
    max_batches: int = 64,
) -> Compressed:
    from onnxruntime.quantization import CalibrationMethod as OrtMethod
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    proto = graphs.load(model)
    evaluating.validate(model, calibration, what="calibration")
    notes: list[str] = []
    depthwise = depthwise_convs(proto)
    if depthwise and not per_channel:
        per_channel = True
        notes.append(
            f"per-channel weights forced: per-tensor scales collapse depthwise Conv "
            f"({', '.join(depthwise[:3])})"
        )
    layers_before = graphs.weight_layers(proto)
    if not layers_before:
        raise PassSkippedError(
            Technique.INT8_STATIC,
            f"no Conv/Gemm/MatMul with constant weights ({_ops(proto)})"
            + graphs.subgraph_note(proto),
        )
    if per_channel:
        proto, per_channel = _opset_for_axis(proto, notes)
    proto = pre_process(proto, notes, why="ORT's recommended step before static quantization")
    feeds = list(calibration[:max_batches])
    extra: dict[str, Any] = {}
    if len({_signature(f) for f in feeds}) > 1:
        extra["CalibStridedMinMax"] = 1
        notes.append("calibration batches differ in shape: collected one batch at a time")
    ort_method = {
        CalibrationMethod.MINMAX: OrtMethod.MinMax,
        CalibrationMethod.ENTROPY: OrtMethod.Entropy,
        CalibrationMethod.PERCENTILE: OrtMethod.Percentile,
    }[method]
    with tempfile.TemporaryDirectory(prefix="ef-sq-") as tmp, graphs.quiet():
        out = Path(tmp) / "q.onnx"
        try:
            quantize_static(
                proto,
                out,
                _Reader(feeds),
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=ort_method,
                extra_options=extra,
            )
        except Exception as exc:  # ORT's tools fail in many ways on real exports
            raise PassSkippedError(
                Technique.INT8_STATIC, f"quantize_static failed: {_first(exc)}"
            ) from exc
        data = out.read_bytes()
    graphs.check_runs(data, Technique.INT8_STATIC, feeds)
    quantized = _quantized_weights(graphs.load(data))
    layers = tuple(
        LayerChange(
            w.node, f"fp32 {shape_text(w.shape)}", "int8 per-channel" if per_channel else "int8"
        )
        for w in layers_before
        if w.weight in quantized
    )
    return Compressed(
        data,
        PassRecord(
            Technique.INT8_STATIC,
            {
                "method": str(method),
                "per_channel": per_channel,
                "format": "QDQ",
                "calibration_batches": len(feeds),
            },
            TOOL,
            len(model),
            len(data),
            layers,
            tuple(notes),
        ),
    )


def _opset_for_axis(proto: Any, notes: list[str]) -> tuple[Any, bool]:
    """Per-channel QDQ needs DequantizeLinear's ``axis`` (opset 13): convert an older model's
    opset, or fall back to per-tensor scales when the converter cannot. (model, per_channel)."""
    import onnx
    from onnx import version_converter

    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 13)
    if opset >= 13:
        return proto, True
    try:
        with graphs.quiet():
            converted = version_converter.convert_version(proto, 13)
            onnx.checker.check_model(converted)
            graphs.check_runs(converted.SerializeToString(), Technique.INT8_STATIC)
    except Exception as exc:  # the converter lacks adapters for some ops
        notes.append(
            f"opset {opset} could not be converted to 13 ({_first(exc)}): per-tensor scales, "
            "since per-channel QDQ needs opset 13"
        )
        return proto, False
    notes.append(f"opset {opset} converted to 13: per-channel QDQ needs DequantizeLinear's axis")
    return converted, True


def depthwise_convs(model: Any) -> list[str]:
    """Conv nodes with one filter per input channel group (``group`` > 1)."""
    return [
        n.name for n in model.graph.node if n.op_type == "Conv" and graphs.attr(n, "group", 1) > 1
    ]


def _quantized_weights(model: Any) -> set[str]:
    """Initializers that feed a DequantizeLinear through their int8 copy (QDQ names them)."""
    names = set()
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.output[0].endswith(
            "_DequantizeLinear_Output"
        ):
            names.add(node.output[0].removesuffix("_DequantizeLinear_Output"))
    return names


def _signature(feed: Feed) -> tuple[tuple[str, tuple[int, ...]], ...]:
    return tuple(sorted((k, tuple(np.shape(v))) for k, v in feed.items()))


def _ops(model: Any) -> str:
    return ", ".join(sorted(graphs.ops(model)))


class _Reader:
    """ORT's CalibrationDataReader protocol, with ``set_range`` for strided collection."""

    def __init__(self, feeds: Sequence[Feed]) -> None:
        self._feeds = [dict(f) for f in feeds]
        self._pos, self._end = 0, len(self._feeds)

    def get_next(self) -> dict[str, Any] | None:
        if self._pos >= self._end:
            return None
        self._pos += 1
        return self._feeds[self._pos - 1]

    def __len__(self) -> int:
        return len(self._feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._pos, self._end = start_index, min(end_index, len(self._feeds))


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
