"""PaddleOCR's models from the rapidocr-onnxruntime wheel: the text-direction classifier
(opset 11, depthwise convolutions: per-channel static quantization converts the opset first
instead of producing a graph ONNX Runtime refuses), the PP-OCRv4 detector (a probability map,
judged by IoU) and recogniser (per-column class scores, judged by CTC sequence agreement), each
through the whole path: compress with a time budget, release, canary to two real agents,
Predict on each device as ONNX Runtime computes it with the winner, rollout succeeded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from edgefleet.controller.compress import corpus, graphs, static_quant
from tests.conftest import Broker
from tests.controller import support

from . import helpers

pytestmark = pytest.mark.slow


def text_lines(rows: int) -> np.ndarray:
    """48x192 lines of digits for the classifier, half of them upside down (its other class)."""
    x = corpus.rec_images(rows, width=192)
    x[1::2] = x[1::2, :, ::-1, ::-1]
    return np.ascontiguousarray(x)


def assert_shipped(path: helpers.WholePath, metric: str) -> None:
    assert path.report["metric"] == metric, path.report["metric"]
    assert path.result.passed, [c.verdict for c in path.result.candidates]
    shipped = path.shipped
    assert shipped.deployed, shipped.why
    assert shipped.predict_matches, (shipped.predict_error, shipped.why)


def test_ocr_classifier_through_the_whole_path(
    ctl: support.Running, broker: Broker, tmp_path: Path, ocr_cls: bytes
) -> None:
    path = helpers.whole_path(
        ctl, broker, tmp_path, ocr_cls, {"x": text_lines(8)}, {"x": text_lines(1)},
        name="ocr-cls", recipe="fp16", max_drop=5.0,
    )  # fmt: skip
    assert_shipped(path, "top1-agreement")


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


def test_ocr_detector_through_the_whole_path(
    ctl: support.Running, broker: Broker, tmp_path: Path, ocr_det: bytes
) -> None:
    pages = corpus.det_images(4, height=96, width=256)
    probe = {"x": corpus.det_images(1, height=128, width=160)}  # another size: H, W dynamic
    path = helpers.whole_path(
        ctl,
        broker,
        tmp_path,
        ocr_det,
        {"x": pages},
        probe,
        name="ocr-det",
        recipe="int8-static",
        max_drop=25.0,
        metric="iou",
    )  # fmt: skip  (fp16 of this detector moves its map: IoU ~0.6 here; int8-static ~0.85)
    assert_shipped(path, "iou>0.5")


def test_ocr_recogniser_through_the_whole_path(
    ctl: support.Running, broker: Broker, tmp_path: Path, ocr_rec: bytes
) -> None:
    lines = corpus.rec_images(6, width=256)
    probe = {"x": corpus.rec_images(1, width=160)}  # another width: W dynamic
    path = helpers.whole_path(
        ctl, broker, tmp_path, ocr_rec, {"x": lines}, probe,
        name="ocr-rec", recipe="fp16", max_drop=10.0, metric="seq:ctc",
    )  # fmt: skip
    assert_shipped(path, "sequence-agreement (ctc)")
