"""Knowledge distillation (needs PyTorch; skipped with the reason when it is not installed)."""

from __future__ import annotations

import importlib.util

import pytest

from edgefleet.controller.compress import distilling
from edgefleet.controller.compress.errors import PassSkippedError
from edgefleet.controller.compress.evaluating import reference, score

needs_torch = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None, reason="PyTorch is not installed (pip install torch)"
)


@needs_torch
def test_distilled_mlp_student_matches_the_teacher(digits_model, mlp_eval, mlp_cal) -> None:
    out = distilling.distill(digits_model.onnx_bytes, mlp_cal, width=0.5, epochs=15)
    assert out.record.params["student"] == "mlp"
    assert len(out.model) < len(digits_model.onnx_bytes)
    assert score(out.model, mlp_eval, reference(digits_model.onnx_bytes, mlp_eval)).value > 0.9


@needs_torch
def test_distilled_cnn_student_is_much_smaller(cnn, cnn_eval, cnn_cal) -> None:
    out = distilling.distill(cnn.onnx_bytes, cnn_cal, epochs=4)
    assert out.record.params["student"] == "cnn"
    assert len(out.model) * 10 < len(cnn.onnx_bytes)
    assert score(out.model, cnn_eval, reference(cnn.onnx_bytes, cnn_eval)).value > 0.8


def test_distillation_skips_without_torch_or_transfer_data(digits_model, monkeypatch) -> None:
    import sys

    with pytest.raises(PassSkippedError, match="transfer data"):
        distilling.distill(digits_model.onnx_bytes, ())
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(PassSkippedError, match="PyTorch is not installed"):
        distilling.distill(digits_model.onnx_bytes, ())
