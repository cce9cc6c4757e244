"""The bad releases of ``faults`` really misbehave the way their names say (real ORT; costs
counted by shape inference, which no machine's speed can change)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from edgefleet.demo.digits import DigitsData, TrainedModel
from tests.agent import faults


def accuracy(model: bytes, data: DigitsData) -> float:
    labels = faults.run(model, data.x_test)["label"]
    return float(np.mean(labels == data.y_test))


def test_wrong_answers_disagree_with_the_truth(
    digits_model: TrainedModel, digits_data: DigitsData
) -> None:
    assert accuracy(digits_model.onnx_bytes, digits_data) > 0.9
    assert accuracy(faults.wrong_answers(digits_model.onnx_bytes), digits_data) < 0.2


def test_nan_scores_keep_the_labels_but_score_nan(
    digits_model: TrainedModel, digits_data: DigitsData
) -> None:
    out = faults.run(faults.nan_scores(digits_model.onnx_bytes), digits_data.x_test[:16])
    assert np.isnan(out["probabilities"]).all()
    good = faults.run(digits_model.onnx_bytes, digits_data.x_test[:16])
    np.testing.assert_array_equal(out["label"], good["label"])


def test_unloadable_passes_the_checker_but_not_onnx_runtime(digits_model: TrainedModel) -> None:
    model = faults.unloadable(digits_model.onnx_bytes)
    onnx.checker.check_model(onnx.load_model_from_string(model))
    with pytest.raises(Exception, match="axis"):
        faults.session(model)


def test_batch_of_one_fails_at_run_time_for_bigger_batches(
    digits_model: TrainedModel, digits_data: DigitsData
) -> None:
    model = faults.batch_of_one(digits_model.onnx_bytes)
    assert faults.run(model, digits_data.x_test[:1])["label"].shape == (1,)
    with pytest.raises(Exception, match="Reshape"):
        faults.run(model, digits_data.x_test[:2])


def test_slow_grows_with_the_batch(digits_model: TrainedModel, digits_data: DigitsData) -> None:
    model = faults.slow()
    assert faults.run(model, digits_data.x_test[:256])["label"].shape == (256,)
    one = faults.macs(model, 1)
    assert one > 1000 * faults.macs(digits_model.onnx_bytes, 1), "far heavier per row"
    assert faults.macs(model, 256) == 256 * one, "and as heavy again for every row"


def test_quadratic_answers_right_but_slows_with_the_square_of_the_batch(
    digits_model: TrainedModel, digits_data: DigitsData
) -> None:
    model = faults.quadratic(digits_model.onnx_bytes)
    got, want = (faults.run(m, digits_data.x_test) for m in (model, digits_model.onnx_bytes))
    np.testing.assert_array_equal(got["label"], want["label"])
    np.testing.assert_allclose(got["probabilities"], want["probabilities"], atol=1e-6)
    per_row = faults.macs(digits_model.onnx_bytes, 1)
    assert faults.macs(digits_model.onnx_bytes, 3000) == 3000 * per_row
    assert faults.macs(model, 1) == per_row + 64  # one row: hardly more than the model
    assert faults.macs(model, 3000) == 3000 * per_row + 64 * 3000**2  # the Gram matrix
