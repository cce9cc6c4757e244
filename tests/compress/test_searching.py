"""Evaluation, bad inputs, recipes and the accuracy-gated search with its reports."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgefleet.controller.compress import graphs, recipes
from edgefleet.controller.compress.errors import InvalidInputError
from edgefleet.controller.compress.evaluating import (
    EvalSet,
    Metric,
    load_eval_set,
    reference,
    score,
)
from edgefleet.controller.compress.searching import Objective, SearchSettings, search
from edgefleet.controller.compress.timing import Latency

from . import models

FAST = SearchSettings(threads=(1,), sensitivity_layers=2, distill_epochs=3)


class FakeTimer:
    """A Timer whose latency is the model's size: deterministic, and shows the Protocol seam."""

    where = "fake"

    def measure(self, model: bytes, feed: object, *, threads: int) -> Latency:
        return Latency(len(model) / 1e4, len(model) / 1e4, threads, 1)


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_eval_set_from_npz_with_labels(digits_model, digits_data) -> None:
    data = _npz(pixels=digits_data.x_test, labels=digits_data.y_test)
    ev = load_eval_set(data, model=digits_model.onnx_bytes)
    ref = reference(digits_model.onnx_bytes, ev)
    assert ref.score.metric is Metric.ACCURACY and ref.score.value > 0.9
    single = load_eval_set(_npz(inputs=digits_data.x_test), model=digits_model.onnx_bytes)
    assert reference(digits_model.onnx_bytes, single).score.metric is Metric.TOP1_AGREEMENT


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"pixels": np.zeros((0, 64), np.float32)}, "empty"),
        ({"image": np.zeros((4, 64), np.float32)}, "names inputs"),
        ({"pixels": np.zeros((4, 63), np.float32)}, r"'pixels' is float32\[4, 63\]"),
        ({"pixels": np.zeros((4, 64), np.float64)}, "float64"),
        ({"pixels": np.zeros((4, 64), np.float32), "labels": np.zeros(3)}, "3 labels for 4"),
    ],
)
def test_bad_eval_sets_name_the_input_and_shapes(digits_model, arrays, message) -> None:
    with pytest.raises(InvalidInputError, match=message):
        load_eval_set(_npz(**arrays), model=digits_model.onnx_bytes)


def test_fidelity_metric_follows_the_output_type() -> None:
    rng = np.random.default_rng(0)
    model = models.sequence(rng)
    ev = EvalSet([{"x": rng.standard_normal((1, t, 16)).astype(np.float32)} for t in (3, 6)])
    ref = reference(model, ev)  # dynamic "seq" axis, ragged batches: still fine
    assert ref.score.metric is Metric.COSINE
    assert score(model, ev, ref).drop == pytest.approx(0, abs=1e-6)


def test_models_with_external_data_are_refused_then_inlined(digits_model, tmp_path: Path) -> None:
    proto = onnx.load_model_from_string(digits_model.onnx_bytes)
    path = tmp_path / "m.onnx"
    onnx.save(proto, str(path), save_as_external_data=True, location="m.bin", size_threshold=0)
    with pytest.raises(InvalidInputError, match=r"external data files \(m.bin\)"):
        graphs.load(path.read_bytes())
    inlined = graphs.load_model_file(path)
    assert graphs.run(inlined, [{"pixels": np.zeros((1, 64), np.float32)}])


def test_recipes_parse_and_refuse_nonsense() -> None:
    (p,) = recipes.parse_recipe("prune-structured-30+cluster-4bit+huffman")
    assert [s.technique for s in p.steps] == ["prune-structured", "cluster", "huffman"]
    assert len(recipes.parse_recipe("auto")) == len(recipes.AUTO)
    for bad, msg in [
        ("int9", "unknown step"),
        ("huffman+cluster-4bit", "must come after"),
        ("prune-100", "1..99"),
        ("", "empty"),
    ]:
        with pytest.raises(InvalidInputError, match=msg):
            recipes.parse_recipe(bad)


def test_search_keeps_the_best_passing_candidate(digits_model, mlp_eval, mlp_cal) -> None:
    result = search(
        digits_model.onnx_bytes,
        mlp_eval,
        recipe="int8-dynamic,prune-95,cluster-4bit+huffman",
        calibration=mlp_cal,
        timer=FakeTimer(),
        settings=FAST,
    )
    by_name = {c.name: c for c in result.candidates}
    assert not by_name["prune-95"].passed_gate and "drop" in by_name["prune-95"].verdict
    assert result.winner is not None and result.winner.passed_gate
    assert result.model is not None and result.transfer is not None
    assert any(s.technique == "prune-95" for s in by_name["prune-95"].sensitivity)
    assert result.golden is not None and result.golden.tolerance > 0
    assert len(result.golden.inputs["pixels"]) == 8
    assert np.load(io.BytesIO(result.golden.to_npz()))["output/label"].shape == (8,)
    doc = json.loads(result.report_json())
    assert doc["winner"] == result.winner.name and len(doc["candidates"]) == 3
    assert "| prune-95 |" in result.report_markdown()


def test_slower_candidates_lose_unless_size_is_the_objective(digits_model, mlp_eval) -> None:
    # FakeTimer: latency = size, and the packed model is as big as the original in ONNX form.
    slow = "fp16"
    for objective, want in [(Objective.BALANCED, "fp16"), (Objective.SIZE, "fp16")]:
        result = search(
            digits_model.onnx_bytes,
            mlp_eval,
            recipe=slow,
            objective=objective,
            timer=FakeTimer(),
            settings=FAST,
        )
        assert result.winner is not None and result.winner.name == want

    class SlowFirst(FakeTimer):
        def measure(self, model: bytes, feed: object, *, threads: int) -> Latency:
            ms = 1.0 if model == digits_model.onnx_bytes else 2.0
            return Latency(ms, ms, threads, 1)

    result = search(
        digits_model.onnx_bytes, mlp_eval, recipe=slow, timer=SlowFirst(), settings=FAST
    )
    assert result.winner is None and "slower" in result.candidates[0].verdict
    assert any("did not pay off" in n for n in result.candidates[0].notes)
    result = search(
        digits_model.onnx_bytes,
        mlp_eval,
        recipe=slow,
        objective=Objective.SIZE,
        timer=SlowFirst(),
        settings=FAST,
    )
    assert result.winner is not None


def test_a_gate_no_candidate_passes_still_reports(digits_model, mlp_eval) -> None:
    result = search(
        digits_model.onnx_bytes,
        mlp_eval,
        recipe="prune-95,prune-layer-90",
        max_drop=0.0,
        timer=FakeTimer(),
        settings=FAST,
    )
    assert not result.passed and result.winner is None and result.model is None
    assert json.loads(result.report_json())["passed"] is False
    assert "No candidate passed" in result.report_markdown()


def test_passes_that_cannot_handle_a_model_are_skipped_and_others_run() -> None:
    rng = np.random.default_rng(0)
    model = models.einsum_only(rng)
    ev = EvalSet.from_arrays({"x": rng.random((32, 64), dtype=np.float32)})
    result = search(
        model, ev, recipe="prune-structured-50,lowrank-0.9,fp16", timer=FakeTimer(), settings=FAST
    )
    verdicts = {c.name: c.verdict for c in result.candidates}
    assert verdicts["prune-structured-50"].startswith("skipped: prune-structured")
    assert verdicts["lowrank-0.9"].startswith("skipped: lowrank")
    assert not verdicts["fp16"].startswith("skipped")
    assert "skipped: lowrank" in result.report_markdown()


def test_mismatched_calibration_data_is_refused(digits_model, mlp_eval) -> None:
    bad = [{"pixels": np.zeros((4, 8, 8), np.float32)}]
    with pytest.raises(
        InvalidInputError, match=r"calibration input 'pixels' is float32\[4, 8, 8\]"
    ):
        search(
            digits_model.onnx_bytes,
            mlp_eval,
            recipe="int8-static",
            calibration=bad,
            timer=FakeTimer(),
            settings=FAST,
        )
