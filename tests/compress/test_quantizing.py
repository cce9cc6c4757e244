"""The quantization passes on the digits models, and the traps each one handles."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgefleet.controller.compress import dynamic_quant, fp16, graphs, int4, static_quant
from edgefleet.controller.compress.evaluating import EvalSet, reference, score
from edgefleet.controller.compress.records import Technique
from edgefleet.controller.compress.static_quant import CalibrationMethod

from . import models


def _ops(data: bytes) -> set[str]:
    return {n.op_type for n in onnx.load_model_from_string(data).graph.node}


def test_int8_dynamic_on_the_mlp(digits_model, mlp_eval: EvalSet) -> None:
    out = dynamic_quant.quantize_int8_dynamic(digits_model.onnx_bytes)
    assert out.record.technique is Technique.INT8_DYNAMIC
    assert [c.layer for c in out.record.layers] == ["gemm_0", "gemm_2"]
    assert out.record.size_after < out.record.size_before / 2
    assert score(out.model, mlp_eval, reference(digits_model.onnx_bytes, mlp_eval)).drop <= 1.0


def test_dynamic_quantization_keeps_conv_out_of_convinteger(cnn, cnn_eval: EvalSet) -> None:
    # The trap: ORT's quantize_dynamic with defaults turns every Conv into ConvInteger.
    with tempfile.TemporaryDirectory() as tmp, graphs.quiet():
        from onnxruntime.quantization import quantize_dynamic

        Path(tmp, "m.onnx").write_bytes(cnn.onnx_bytes)
        quantize_dynamic(Path(tmp, "m.onnx"), Path(tmp, "q.onnx"))
        assert "ConvInteger" in _ops(Path(tmp, "q.onnx").read_bytes())
    out = dynamic_quant.quantize_int8_dynamic(cnn.onnx_bytes)
    assert "ConvInteger" not in _ops(out.model)
    assert "Conv" in _ops(out.model)
    assert any("ConvInteger" in n for n in out.record.notes)
    assert score(out.model, cnn_eval, reference(cnn.onnx_bytes, cnn_eval)).drop <= 1.0


def test_weights_that_are_not_initializers_are_pre_processed() -> None:
    model = models.transposed_weight(np.random.default_rng(0))
    # Without pre-processing ORT leaves the MatMul in fp32: nothing gets quantized.
    with tempfile.TemporaryDirectory() as tmp, graphs.quiet():
        from onnxruntime.quantization import quantize_dynamic

        Path(tmp, "m.onnx").write_bytes(model)
        quantize_dynamic(Path(tmp, "m.onnx"), Path(tmp, "q.onnx"))
        assert "MatMulInteger" not in _ops(Path(tmp, "q.onnx").read_bytes())
    out = dynamic_quant.quantize_int8_dynamic(model)
    assert "MatMulInteger" in _ops(out.model)
    assert any("quant_pre_process" in n for n in out.record.notes)


@pytest.mark.parametrize("method", list(CalibrationMethod))
def test_int8_static_qdq_each_calibration_method(cnn, cnn_eval, cnn_cal, method) -> None:
    out = static_quant.quantize_int8_static(cnn.onnx_bytes, cnn_cal[:2], method=method)
    assert "QuantizeLinear" in _ops(out.model) and "DequantizeLinear" in _ops(out.model)
    assert out.record.params["method"] == str(method)
    assert {c.layer for c in out.record.layers} == {"conv1", "conv2", "fc1", "fc2"}
    assert out.record.size_after < out.record.size_before / 3.5
    assert score(out.model, cnn_eval, reference(cnn.onnx_bytes, cnn_eval)).drop <= 1.0


def test_depthwise_convs_get_per_channel_scales() -> None:
    rng = np.random.default_rng(1)
    model = models.depthwise(rng)
    cal = EvalSet.from_arrays({"x": rng.random((64, 1, 8, 8), dtype=np.float32)}, batch_size=32)
    ev = EvalSet.from_arrays({"x": rng.random((32, 1, 8, 8), dtype=np.float32)})
    ref = reference(model, ev)
    with tempfile.TemporaryDirectory() as tmp, graphs.quiet():  # the trap, shown with ORT itself
        from onnxruntime.quantization import QuantFormat, quantize_static

        Path(tmp, "m.onnx").write_bytes(model)
        quantize_static(
            Path(tmp, "m.onnx"),
            Path(tmp, "q.onnx"),
            static_quant._Reader(cal.batches),
            quant_format=QuantFormat.QDQ,
            per_channel=False,
        )
        collapsed = score(Path(tmp, "q.onnx").read_bytes(), ev, ref)
    out = static_quant.quantize_int8_static(model, cal.batches, per_channel=False)
    kept = score(out.model, ev, ref)
    assert out.record.params["per_channel"] is True
    assert any("depthwise" in n for n in out.record.notes)
    assert kept.value > 0.99 and kept.value > collapsed.value


def test_histogram_calibration_with_sequences_of_varying_length() -> None:
    rng = np.random.default_rng(2)
    model = models.sequence(rng)
    feeds = [{"x": rng.standard_normal((1, t, 16)).astype(np.float32)} for t in (5, 9, 7, 12)]
    with tempfile.TemporaryDirectory() as tmp, graphs.quiet():  # the trap, shown with ORT itself
        from onnxruntime.quantization import CalibrationMethod as Ort
        from onnxruntime.quantization import quantize_static

        Path(tmp, "m.onnx").write_bytes(model)
        with pytest.raises(ValueError, match="inhomogeneous"):
            quantize_static(
                Path(tmp, "m.onnx"),
                Path(tmp, "q.onnx"),
                static_quant._Reader(feeds),
                calibrate_method=Ort.Entropy,
            )
    for method in (CalibrationMethod.ENTROPY, CalibrationMethod.PERCENTILE):
        out = static_quant.quantize_int8_static(model, feeds, method=method)
        assert any("differ in shape" in n for n in out.record.notes)
        y = graphs.run(out.model, feeds[:1])[0][0]
        want = graphs.run(model, feeds[:1])[0][0]
        cos = float((y * want).sum() / np.linalg.norm(y) / np.linalg.norm(want))
        assert cos > 0.99


def test_fp16_halves_the_weights_and_keeps_io_types(digits_model, mlp_eval) -> None:
    out = fp16.convert_fp16(digits_model.onnx_bytes)
    assert out.record.size_after < 0.6 * out.record.size_before
    assert score(out.model, mlp_eval, reference(digits_model.onnx_bytes, mlp_eval)).drop <= 1.0


def test_int4_weights_use_matmulnbits(cnn, cnn_eval) -> None:
    out = int4.quantize_int4_weights(cnn.onnx_bytes)
    assert "MatMulNBits" in _ops(out.model)
    assert [c.layer for c in out.record.layers] == ["fc1", "fc2"]
    assert any("Conv left in fp32" in n for n in out.record.notes)
    assert out.record.size_after < out.record.size_before / 4
    assert score(out.model, cnn_eval, reference(cnn.onnx_bytes, cnn_eval)).drop <= 1.0
