"""The search's progress hook: one call per candidate, in order; raising from it stops it."""

from __future__ import annotations

import pytest

from edgefleet.controller.compress.evaluating import EvalSet
from edgefleet.controller.compress.searching import CandidateRecord, SearchSettings, search
from edgefleet.demo import digits

FAST = SearchSettings(threads=(1,), sensitivity_layers=0)
RECIPE = "int8-dynamic,cluster-4bit+huffman"


def test_on_candidate_reports_each_candidate(
    digits_model: digits.TrainedModel, mlp_eval: EvalSet
) -> None:
    seen: list[tuple[int, int, str]] = []

    def progress(done: int, total: int, record: CandidateRecord) -> None:
        seen.append((done, total, record.name))

    result = search(
        digits_model.onnx_bytes, mlp_eval, recipe=RECIPE, settings=FAST, on_candidate=progress
    )
    assert seen == [(1, 2, "int8-dynamic"), (2, 2, "cluster-4bit+huffman")]
    assert [c.name for c in result.candidates] == ["int8-dynamic", "cluster-4bit+huffman"]


def test_raising_from_on_candidate_stops_the_search(
    digits_model: digits.TrainedModel, mlp_eval: EvalSet
) -> None:
    class Stop(Exception):
        pass

    seen: list[str] = []

    def progress(done: int, total: int, record: CandidateRecord) -> None:
        seen.append(record.name)
        raise Stop

    with pytest.raises(Stop):
        search(
            digits_model.onnx_bytes, mlp_eval, recipe=RECIPE, settings=FAST, on_candidate=progress
        )
    assert seen == ["int8-dynamic"]
