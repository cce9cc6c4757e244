"""The search on its budget: order, estimates, a stop at the budget with a report, candidates
that raise recorded as failed, winners validated, graphs kept sorted."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import onnx
import pytest

from edgefleet.common import errors
from edgefleet.common.durations import parse_duration
from edgefleet.controller.compress import graphs, recipes
from edgefleet.controller.compress.errors import InvalidInputError
from edgefleet.controller.compress.evaluating import EvalSet
from edgefleet.controller.compress.fp16 import convert_fp16
from edgefleet.controller.compress.searching import (
    CandidateRecord,
    SearchSettings,
    Upcoming,
    search,
)
from edgefleet.controller.compress.timing import Latency
from edgefleet.demo import digits

FAST = SearchSettings(threads=(1,), sensitivity_layers=0, golden_count=4)


class SizeTimer:
    """Latency = model size: deterministic."""

    where = "fake"

    def measure(self, model: bytes, feed: object, *, threads: int) -> Latency:
        return Latency(len(model) / 1e4, len(model) / 1e4, threads, 1)


class BrokenTimer(SizeTimer):
    """Times the original, raises on every candidate: a runtime failing on a real model."""

    def __init__(self, original: bytes) -> None:
        self.original = original

    def measure(self, model: bytes, feed: object, *, threads: int) -> Latency:
        if model != self.original:
            raise RuntimeError("kernel crashed\nsecond line")
        return super().measure(model, feed, threads=threads)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_auto_runs_cheapest_first() -> None:
    costs = [recipes.cost(p) for p in sorted(recipes.parse_recipe("auto"), key=recipes.cost)]
    assert costs == sorted(costs)
    first = min(recipes.parse_recipe("auto"), key=recipes.cost)
    assert first.name in ("int8-dynamic", "fp16")
    last = max(recipes.parse_recipe("auto"), key=recipes.cost)
    assert "distill" in last.name


def test_the_budget_stops_the_search_and_the_report_says_so(
    digits_model: digits.TrainedModel, mlp_eval: EvalSet
) -> None:
    clock = Clock()
    started: list[Upcoming] = []

    def spend(done: int, total: int, record: CandidateRecord) -> None:
        clock.now += 100.0  # every candidate "takes" 100 s

    result = search(
        digits_model.onnx_bytes,
        mlp_eval.head(200),
        recipe="int8-dynamic,cluster-4bit+huffman,prune-50+cluster-4bit+huffman",
        max_drop=5.0,
        timer=SizeTimer(),
        settings=replace(FAST, time_budget_s=150.0),
        on_candidate=spend,
        on_start=started.append,
        clock=clock,
    )
    verdicts = [c.verdict for c in result.candidates]
    assert len(result.candidates) == 3
    assert not verdicts[0].startswith("not run")
    assert verdicts[-1].startswith("not run") and "time budget" in verdicts[-1]
    assert result.stopped == "the time budget"
    assert [u.name for u in started] == [c.name for c in result.candidates][: len(started)]
    assert all(u.budget_left_s <= 150.0 for u in started)
    report = json.loads(result.report_json())
    assert report["stopped_by"] == "the time budget" and report["time_budget_s"] == 150.0
    assert "not run" in result.report_markdown()
    if result.winner is not None:  # the best of those that ran
        assert not result.winner.verdict.startswith("not run")


def test_a_candidate_that_raises_is_recorded_and_the_search_goes_on(
    digits_model: digits.TrainedModel, mlp_eval: EvalSet
) -> None:
    result = search(
        digits_model.onnx_bytes,
        mlp_eval.head(100),
        recipe="int8-dynamic,cluster-4bit+huffman",
        timer=BrokenTimer(digits_model.onnx_bytes),
        settings=FAST,
    )
    assert [c.verdict for c in result.candidates] == [
        "failed: RuntimeError: kernel crashed",
        "failed: RuntimeError: kernel crashed",
    ]
    assert result.winner is None and result.model is None
    assert json.loads(result.report_json())["passed"] is False


def test_toposort_makes_a_reversed_graph_valid_again(digits_model: digits.TrainedModel) -> None:
    proto = onnx.load_model_from_string(digits_model.onnx_bytes)
    nodes = list(proto.graph.node)
    del proto.graph.node[:]
    proto.graph.node.extend(reversed(nodes))
    shuffled = proto.SerializeToString()
    with pytest.raises(InvalidInputError, match="topologically sorted"):
        graphs.validate_model(shuffled)
    graphs.toposort(proto)
    fixed = proto.SerializeToString()
    graphs.validate_model(fixed)
    x = {"pixels": np.random.default_rng(0).random((4, 64), dtype=np.float32)}
    want = graphs.run(digits_model.onnx_bytes, [x])[0]
    got = graphs.run(fixed, [x])[0]
    for a, b in zip(want, got, strict=True):
        np.testing.assert_array_equal(a, b)


def test_fp16_output_passes_the_checker(digits_model: digits.TrainedModel) -> None:
    out = convert_fp16(digits_model.onnx_bytes)
    onnx.checker.check_model(onnx.load_model_from_string(out.model))
    graphs.validate_model(out.model, [{"pixels": np.zeros((2, 64), np.float32)}])


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90.0), ("90s", 90.0), ("10m", 600.0), ("1.5h", 5400.0), ("0", 0.0)]
)
def test_time_budgets_read_as_durations(text: str, seconds: float) -> None:
    assert parse_duration(text, what="--time-budget") == seconds


def test_a_time_budget_that_is_no_duration_is_refused() -> None:
    with pytest.raises(errors.InvalidInputError, match="--time-budget: expected a duration"):
        parse_duration("ten minutes", what="--time-budget")


def test_a_hopeless_candidate_fails_the_screen_without_the_full_evaluation(
    digits_model: digits.TrainedModel, mlp_eval: EvalSet
) -> None:
    result = search(
        digits_model.onnx_bytes,
        mlp_eval,
        recipe="prune-95,int8-dynamic",
        timer=SizeTimer(),
        settings=replace(FAST, screen_samples=64),
    )
    pruned, quantized = result.candidates
    assert pruned.verdict.startswith("fails the screen") and not pruned.passed_gate
    assert pruned.size_bytes > 0 and pruned.latency == ()  # compressed, never timed
    assert not quantized.verdict.startswith("fails the screen")
