"""The speed gate in the search: interleaved ratios per thread count, and what they decide.

Timers here are deterministic except the one real search, which checks that the figures are
there and consistent, never what they are (that depends on the CPU).
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

from edgefleet.controller.compress import searching
from edgefleet.controller.compress.evaluating import EvalSet
from edgefleet.controller.compress.searching import Objective, SearchSettings, search
from edgefleet.controller.compress.speedstats import Plan, SpeedRatio
from edgefleet.controller.compress.timing import Latency, LocalTimer
from edgefleet.demo import digits

FAST = SearchSettings(
    threads=(1, 2),
    sensitivity_layers=0,
    golden_count=0,
    speed=Plan(min_rounds=6, max_rounds=10, budget_s=2.0),
)


class ThreadsTimer:
    """Latency = model size at 1 thread; at 2 threads any model but ``original`` takes 2.4x
    as long as it (a quantized model whose kernels do not scale with threads). 3 cores."""

    where = "fake"

    def __init__(self, original: bytes) -> None:
        self.original = original

    def measure(self, model: bytes, feed: object, *, threads: int) -> Latency:
        ms = len(model) / 1e4
        if threads > 1:
            ms = len(self.original) / 1e4 * (1.0 if model == self.original else 2.4)
        return Latency(ms, ms, threads, 1, cores=3)


def _ratio(ratio: float, low: float, high: float, threads: int = 1) -> SpeedRatio:
    return SpeedRatio(threads, ratio, low, high, 10, 0.98, 1.0, 1.0, ratio)


def test_latency_needs_faster_beyond_the_noise_at_every_thread_count() -> None:
    s = SearchSettings()
    sure = _ratio(0.6, 0.55, 0.65)
    noisy = _ratio(0.9, 0.8, 1.02, threads=4)
    passed, verdict, _ = searching._gate(1.0, [sure, noisy], 2.0, Objective.LATENCY, s)
    assert not passed and verdict.startswith("fails: not faster beyond the noise: 0.90x")
    assert "at 4 threads" in verdict
    passed, _, _ = searching._gate(1.0, [sure, _ratio(0.8, 0.7, 0.9, 4)], 2.0, Objective.LATENCY, s)
    assert passed


def test_balanced_fails_slower_beyond_the_noise_and_passes_noise() -> None:
    s = SearchSettings()
    sure = _ratio(0.6, 0.55, 0.65)
    slow = _ratio(2.44, 2.3, 2.6, threads=2)
    passed, verdict, notes = searching._gate(0.0, [sure, slow], 1.0, Objective.BALANCED, s)
    assert not passed and "2.44x [2.30, 2.60] at 2 threads" in verdict
    assert notes and "did not pay off in speed" in notes[0]
    noise = _ratio(1.1, 0.95, 1.2, threads=2)  # 10% slower, maybe: not beyond the noise
    assert searching._gate(0.0, [sure, noise], 1.0, Objective.BALANCED, s)[0]
    passed, _, notes = searching._gate(0.0, [sure, slow], 1.0, Objective.SIZE, s)
    assert passed and notes  # size does not gate on speed, but says so


def test_slower_at_n_threads_fails_balanced_with_the_figure(
    digits_model: digits.TrainedModel, mlp_eval: EvalSet
) -> None:
    result = search(
        digits_model.onnx_bytes,
        mlp_eval.head(200),
        recipe="int8-dynamic",
        max_drop=5.0,
        timer=ThreadsTimer(digits_model.onnx_bytes),
        settings=replace(FAST, threads=(1, 0)),  # 0: the timer's cores
    )
    (c,) = result.candidates
    assert [s.threads for s in c.speed] == [1, 3]
    assert c.speed_ratio is not None and c.speed_ratio.faster  # smaller: faster at 1 thread
    assert c.speed_ratio_nt is not None and c.speed_ratio_nt.ratio == 2.4
    assert not c.passed_gate and "2.40x [2.40, 2.40] at 3 threads" in c.verdict
    assert result.winner is None


def test_a_real_search_reports_speed_ratios_with_their_intervals(
    digits_model: digits.TrainedModel, mlp_eval: EvalSet
) -> None:
    result = search(
        digits_model.onnx_bytes,
        mlp_eval.head(200),
        recipe="int8-dynamic,fp16",
        max_drop=5.0,
        timer=LocalTimer(warmup=2),
        settings=FAST,
    )
    report = json.loads(result.report_json())
    timed = [c for c in result.candidates if c.latency]
    assert timed, [c.verdict for c in result.candidates]
    for c, doc in zip(result.candidates, report["candidates"], strict=True):
        if not c.latency:
            continue
        assert [s.threads for s in c.speed] == [1, 2] == [lat.threads for lat in c.latency]
        for s in c.speed:
            assert s.rounds > 0 and s.seconds > 0
            assert s.low <= s.ratio <= s.high and s.ratio > 0
            assert math.isfinite(s.original_ms) and math.isfinite(s.candidate_ms)
            assert not (s.faster and s.slower)
        assert c.speed_ratio is c.speed[0] and c.speed_ratio_nt is c.speed[1]
        assert doc["speed_ratio"] == c.speed[0].ratio and doc["speed_ratio_nt"] == c.speed[1].ratio
        assert [d["rounds"] for d in doc["speed"]] == [s.rounds for s in c.speed]
    assert report["original"]["speed"] == []
    markdown = result.report_markdown()
    assert "| speed 1t | speed 2t |" in markdown and "1x (ref)" in markdown


def test_the_api_carries_cores_and_the_speed_fields() -> None:
    from edgefleet.controller import api
    from edgefleet.v1 import controller_pb2

    assert api.compress_job(controller_pb2.CompressRequest(name="m", cores=6)).cores == 6
    record = searching.CandidateRecord(
        "int8-dynamic",
        ("int8-dynamic",),
        (),
        10,
        10,
        (Latency(1.0, 1.2, 1, 30), Latency(0.6, 0.7, 6, 30)),
        "top1",
        0.99,
        0.5,
        True,
        "passes",
        speed=(_ratio(0.6, 0.55, 0.65), _ratio(0.8, 0.7, 0.9, threads=6)),
    )
    msg = api.compress_candidate(record)
    assert (msg.speed_ratio, msg.speed_ratio_low, msg.speed_ratio_high) == (0.6, 0.55, 0.65)
    assert (msg.speed_ratio_nt, msg.speed_threads_nt, msg.speed_rounds_nt) == (0.8, 6, 10)
    original = api.compress_candidate(replace(record, speed=()))
    assert original.speed_ratio == 0 and original.speed_rounds == 0  # not timed against itself
