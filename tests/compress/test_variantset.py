"""The models per hardware class a search picks from its own candidates (``variants=True``):
judged on accuracy alone, each validated, in the order devices try them, with notes for the
classes that have none. Real models, real ONNX Runtime, real timing (never asserted)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from edgefleet.controller.compress import variantset
from edgefleet.controller.compress.evaluating import EvalSet
from edgefleet.controller.compress.searching import Objective, SearchSettings, search
from edgefleet.demo import digits

FAST = SearchSettings(threads=(1,), sensitivity_layers=0, golden_count=0)


def _run(model: bytes, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    out: np.ndarray = session.run(None, {session.get_inputs()[0].name: x})[0]
    return out


def test_fp16_and_int8_variants_come_from_the_candidates_whatever_their_speed(
    digits_model: digits.TrainedModel, mlp_eval: EvalSet, digits_data: digits.DigitsData
) -> None:
    result = search(
        digits_model.onnx_bytes,
        mlp_eval,
        recipe="int8-dynamic,fp16",
        max_drop=5.0,
        settings=FAST,
        variants=True,
    )
    picked = result.variants
    assert picked is not None
    # no fp32-arithmetic candidate ran: the release's default is the original
    assert picked.default.candidate == variantset.ORIGINAL and picked.default.model is None
    assert [(p.cls.name if p.cls else "", p.candidate) for p in picked.variants] == [
        ("fp16", "fp16"),
        ("int8-vnni", "int8-dynamic"),
        ("int8-dotprod", "int8-dynamic"),
    ]
    fp16, vnni, dotprod = picked.variants
    assert fp16.cls is not None and fp16.cls.requires == ("gpu",)
    assert fp16.cls.providers[0] == "CUDAExecutionProvider"
    assert vnni.model == dotprod.model  # one model, one variant per instruction set
    records = {r.name: r for r in result.candidates}
    x = digits_data.x_test[:32]
    want = _run(digits_model.onnx_bytes, x).argmax(axis=1)
    for p in picked.variants:
        assert p.drop == records[p.candidate].drop <= 5.0
        assert p.model is not None
        agree = (_run(p.model, x).argmax(axis=1) == want).mean()
        assert agree >= 0.9  # the model the search scored, runnable in ORT


def test_a_class_without_a_candidate_has_a_note_and_no_variant(
    digits_model: digits.TrainedModel, mlp_eval: EvalSet
) -> None:
    result = search(
        digits_model.onnx_bytes,
        mlp_eval,
        recipe="int8-dynamic",
        max_drop=5.0,
        objective=Objective.SIZE,
        settings=FAST,
        variants=True,
    )
    assert result.variants is not None
    assert [p.cls.name for p in result.variants.variants if p.cls] == ["int8-vnni", "int8-dotprod"]
    assert result.variants.notes == ("no fp16 variant: the recipe has no fp16 candidate",)


def test_a_candidate_over_the_accuracy_gate_is_no_variant(
    digits_model: digits.TrainedModel, mlp_eval: EvalSet
) -> None:
    result = search(
        digits_model.onnx_bytes,
        mlp_eval,
        recipe="int8-dynamic,fp16,prune-structured-50+int8-dynamic",
        max_drop=0.0,
        settings=FAST,
        variants=True,
    )
    assert result.variants is not None
    records = {r.name: r for r in result.candidates}
    chosen = {p.candidate for p in result.variants.variants}
    assert records["prune-structured-50+int8-dynamic"].drop > 0  # half the units gone
    for name, record in records.items():  # whichever dropped at all is out, with its reason
        assert (name in chosen) == (record.drop <= 0.0)
    if not chosen & {"int8-dynamic"}:  # no int8 candidate kept: the note names them
        assert any(
            "no int8 variant" in n and "prune-structured-50+int8-dynamic" in n
            for n in result.variants.notes
        )


def test_without_asking_there_are_no_variants(
    digits_model: digits.TrainedModel, mlp_eval: EvalSet
) -> None:
    result = search(digits_model.onnx_bytes, mlp_eval, recipe="fp16", settings=FAST)
    assert result.variants is None
