"""PaddleOCR's text-direction classifier (opset 11, depthwise convolutions): per-channel static
quantization converts the opset first instead of producing a graph ONNX Runtime refuses."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from edgefleet.controller.compress import graphs, static_quant

pytestmark = pytest.mark.slow


def test_int8_static_on_an_opset_11_model_converts_the_opset_and_runs(ocr_cls: bytes) -> None:
    proto = onnx.load_model_from_string(ocr_cls)
    assert next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) < 13
    x = np.random.default_rng(0).uniform(-1, 1, (8, 3, 48, 192)).astype(np.float32)
    out = static_quant.quantize_int8_static(ocr_cls, [{"x": x}], per_channel=True)
    assert any("converted to 13" in n for n in out.record.notes), out.record.notes
    quantized = onnx.load_model_from_string(out.model)
    assert next(o.version for o in quantized.opset_import if o.domain in ("", "ai.onnx")) >= 13
    assert {"QuantizeLinear", "DequantizeLinear"} <= graphs.ops(quantized)
    graphs.validate_model(out.model, [{"x": x[:2]}])
