"""The quantization passes on the digits models, and the traps each one handles.

What int8 models score depends on the CPU's int8 kernels (AVX2 without VNNI saturates where
VNNI does not), so these tests read what the passes wrote instead: which ops were quantized,
the int8 weights with their scales and zero points, the activation scales, and that the
weights decode to within half a quantization step of the fp32 ones. Those are the same on
every machine; the trap each pass handles is shown on ORT's own output the same way.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgefleet.controller.compress import dynamic_quant, fp16, graphs, int4, static_quant
from edgefleet.controller.compress.evaluating import EvalSet, reference, score
from edgefleet.controller.compress.records import Technique
from edgefleet.controller.compress.static_quant import CalibrationMethod

from . import models

Array = np.ndarray


def _ops(data: bytes) -> set[str]:
    return {n.op_type for n in onnx.load_model_from_string(data).graph.node}


def _inits(data: bytes) -> dict[str, Array]:
    return {
        i.name: numpy_helper.to_array(i)
        for i in onnx.load_model_from_string(data).graph.initializer
    }


def _axis(data: bytes, quantized: str) -> int:
    """The channel axis of ``quantized``'s scales: its DequantizeLinear's (QDQ), else the last."""
    for node in onnx.load_model_from_string(data).graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] == quantized:
            return int(graphs.attr(node, "axis", 1))
    return -1


class Int8Weight:
    """One weight as a quantization pass wrote it: ``{name}_quantized``, ``_scale``,
    ``_zero_point`` (ORT's names, in QDQ and in dynamic graphs alike)."""

    def __init__(self, data: bytes, name: str) -> None:
        inits = _inits(data)
        self.values = inits[f"{name}_quantized"]
        self.scale = inits[f"{name}_scale"]
        self.zero_point = inits[f"{name}_zero_point"]
        self.axis = _axis(data, f"{name}_quantized")

    def decoded(self) -> Array:
        shape = [1] * self.values.ndim
        if self.scale.ndim:
            shape[self.axis] = self.scale.size
        zero = self.zero_point.astype(np.float32).reshape(shape)
        return (self.values.astype(np.float32) - zero) * self.scale.reshape(shape)

    def step(self) -> Array:
        """The quantization step of each weight, broadcast to the weight's shape."""
        shape = [1] * self.values.ndim
        if self.scale.ndim:
            shape[self.axis] = self.scale.size
        return np.broadcast_to(self.scale.reshape(shape), self.values.shape)


def assert_int8_weights(data: bytes, original: bytes, names: list[str]) -> dict[str, Int8Weight]:
    """Each of ``names`` is stored as int8 with a positive scale, zero point 0 (symmetric), and
    decodes to within half a step of its fp32 value."""
    fp32 = _inits(original)
    found = {}
    for name in names:
        w = Int8Weight(data, name)
        assert w.values.dtype == np.int8, name
        assert np.all(w.scale > 0) and np.all(np.isfinite(w.scale)), name
        assert np.all(w.zero_point == 0), name
        want = fp32[name]
        if want.shape != w.values.shape:  # pre-processing may store a Gemm weight transposed
            want = want.T
        err = np.abs(w.decoded() - want)
        assert np.all(err <= w.step() * (0.5 + 1e-4) + 1e-7), (name, float(err.max()))
        found[name] = w
    return found


def activation_scales(data: bytes) -> dict[str, Array]:
    """The scale of every QuantizeLinear on an activation (QDQ: what calibration produced)."""
    inits = _inits(data)
    return {
        n.input[0]: inits[n.input[1]]
        for n in onnx.load_model_from_string(data).graph.node
        if n.op_type == "QuantizeLinear"
    }


def _weight_names(data: bytes) -> list[str]:
    return [w.weight for w in graphs.weight_layers(graphs.load(data))]


def test_int8_dynamic_on_the_mlp(digits_model) -> None:
    out = dynamic_quant.quantize_int8_dynamic(digits_model.onnx_bytes)
    assert out.record.technique is Technique.INT8_DYNAMIC
    assert [c.layer for c in out.record.layers] == ["gemm_0", "gemm_2"]
    assert out.record.size_after < out.record.size_before / 2
    ops = _ops(out.model)
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops and "Gemm" not in ops
    nodes = onnx.load_model_from_string(out.model).graph.node
    assert sum(n.op_type == "MatMulInteger" for n in nodes) == 2
    weights = assert_int8_weights(out.model, digits_model.onnx_bytes, ["w1", "w2"])
    assert all(w.scale.shape == () for w in weights.values())  # dynamic: per-tensor


def test_dynamic_quantization_keeps_conv_out_of_convinteger(cnn) -> None:
    # The trap: ORT's quantize_dynamic with defaults turns every Conv into ConvInteger.
    with tempfile.TemporaryDirectory() as tmp, graphs.quiet():
        from onnxruntime.quantization import quantize_dynamic

        Path(tmp, "m.onnx").write_bytes(cnn.onnx_bytes)
        quantize_dynamic(Path(tmp, "m.onnx"), Path(tmp, "q.onnx"))
        assert "ConvInteger" in _ops(Path(tmp, "q.onnx").read_bytes())
    out = dynamic_quant.quantize_int8_dynamic(cnn.onnx_bytes)
    assert "ConvInteger" not in _ops(out.model)
    assert "Conv" in _ops(out.model) and "MatMulInteger" in _ops(out.model)
    assert any("ConvInteger" in n for n in out.record.notes)
    conv_weights = [
        n.input[1] for n in onnx.load_model_from_string(out.model).graph.node if n.op_type == "Conv"
    ]
    fp32 = _inits(cnn.onnx_bytes)
    kept = _inits(out.model)
    assert conv_weights and all(
        kept[w].dtype == np.float32 and np.array_equal(kept[w], fp32[w]) for w in conv_weights
    ), "Conv weights stay fp32, untouched"
    fc = [c.layer for c in out.record.layers]
    assert fc == ["fc1", "fc2"]


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
def test_int8_static_qdq_each_calibration_method(cnn, cnn_cal, method) -> None:
    out = static_quant.quantize_int8_static(cnn.onnx_bytes, cnn_cal[:2], method=method)
    assert "QuantizeLinear" in _ops(out.model) and "DequantizeLinear" in _ops(out.model)
    assert out.record.params["method"] == str(method)
    assert {c.layer for c in out.record.layers} == {"conv1", "conv2", "fc1", "fc2"}
    assert out.record.size_after < out.record.size_before / 3.5
    names = _weight_names(cnn.onnx_bytes)
    weights = assert_int8_weights(out.model, cnn.onnx_bytes, names)
    for name, w in weights.items():  # per-channel: one scale per output channel
        assert w.scale.ndim == 1 and w.scale.size == w.values.shape[w.axis] > 1, name
    scales = activation_scales(out.model)
    assert "pixels" in scales, "the input itself is quantized"
    assert all(s.shape == () and 0 < s < np.inf for s in scales.values()), scales


def test_depthwise_convs_get_per_channel_scales() -> None:
    rng = np.random.default_rng(1)
    model = models.depthwise(rng)
    cal = EvalSet.from_arrays({"x": rng.random((64, 1, 8, 8), dtype=np.float32)}, batch_size=32)
    w2 = _inits(model)["w2"]
    ranges = np.abs(w2).reshape(8, -1).max(axis=1)
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
        collapsed = Int8Weight(Path(tmp, "q.onnx").read_bytes(), "w2")
    # one scale for all 8 channels: the smallest ones (ranges up to 1000x below the largest)
    # round to nothing but zeros
    assert collapsed.scale.shape == ()
    zeroed = [c for c in range(8) if not collapsed.decoded()[c].any()]
    assert zeroed == [0, 1], zeroed

    out = static_quant.quantize_int8_static(model, cal.batches, per_channel=False)
    assert out.record.params["per_channel"] is True
    assert any("depthwise" in n for n in out.record.notes)
    kept = assert_int8_weights(out.model, model, ["w1", "w2"])["w2"]
    assert (kept.scale.shape, kept.axis) == ((8,), 0)
    # each channel's scale follows its own range, so none rounds to zero
    np.testing.assert_allclose(kept.scale / kept.scale.max(), ranges / ranges.max(), rtol=1e-5)
    assert all(kept.decoded()[c].any() for c in range(8))
    dw = next(n for n in onnx.load_model_from_string(out.model).graph.node if n.name == "dw")
    assert dw.op_type == "Conv" and dw.input[1] == "w2_DequantizeLinear_Output"


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
    largest = float(max(np.abs(f["x"]).max() for f in feeds))
    for method in (CalibrationMethod.ENTROPY, CalibrationMethod.PERCENTILE):
        out = static_quant.quantize_int8_static(model, feeds, method=method)
        assert any("differ in shape" in n for n in out.record.notes)
        assert {c.layer for c in out.record.layers} == {"mm1", "mm2"}
        assert_int8_weights(out.model, model, ["w1", "w2"])
        scales = activation_scales(out.model)
        assert {"x", "r", "y_QuantizeLinear_Input"} == set(scales), sorted(scales)
        # histograms of every batch were merged: a finite range no wider than the data's
        assert 0 < float(scales["x"]) * 255 <= 2 * largest * (1 + 1e-5), (method, scales["x"])
        for t in (5, 12):  # the quantized graph runs sequences of any length
            y = graphs.run(out.model, [{"x": np.zeros((1, t, 16), np.float32)}])[0][0]
            assert y.shape == (1, t, 8)


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
