"""Compression benchmark: our passes and the gated search against ONNX Runtime's own tools.

Models: the digits MLP and CNN made in the repo, and PaddleOCR's text-direction classifier
(a MobileNetV3 with depthwise convolutions) shipped inside the ``rapidocr-onnxruntime`` wheel,
when that package is installed (skipped, and said so, otherwise). The baseline is
``onnxruntime.quantization.quantize_dynamic`` with default settings. Writes
``bench/results/compression.json`` (one record per model and candidate) and prints a table with
ratios against the fp32 original and the baseline, and PASS/FAIL per target.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.controller.compress import graphs, samples
from edgefleet.controller.compress.evaluating import EvalSet, reference, score
from edgefleet.controller.compress.searching import SearchResult, SearchSettings, search
from edgefleet.controller.compress.timing import LocalTimer
from edgefleet.demo import digits

RESULTS = Path(__file__).parent / "results" / "compression.json"
OCR_PACKAGE = "rapidocr-onnxruntime"
OCR_MODEL = "ch_ppocr_mobile_v2.0_cls_infer.onnx"
QUANT_ONLY = {"int8-dynamic", "int8-static", "int4-weights", "fp16"}


@dataclass(frozen=True)
class Case:
    name: str
    model: bytes
    eval_set: EvalSet
    calibration: tuple[dict[str, Any], ...]
    settings: SearchSettings


def cases(data: digits.DigitsData) -> tuple[list[Case], list[str]]:
    mlp = digits.train(data, hidden=32)
    cnn = samples.train_cnn(data)
    imgs = samples.images
    out = [
        Case(
            "digits-mlp",
            mlp.onnx_bytes,
            EvalSet.from_arrays({"pixels": data.x_test}, data.y_test),
            EvalSet.from_arrays({"pixels": data.x_train}).batches,
            SearchSettings(),
        ),
        Case(
            "digits-cnn",
            cnn.onnx_bytes,
            EvalSet.from_arrays({"pixels": imgs(data.x_test)}, data.y_test),
            EvalSet.from_arrays({"pixels": imgs(data.x_train)}).batches,
            SearchSettings(),
        ),
    ]
    skipped = []
    ocr = _ocr_model()
    if ocr is None:
        skipped.append(f"{OCR_PACKAGE} is not installed: its pretrained classifier was skipped")
    else:
        x_eval, y_eval = text_lines(data, 300, seed=1)
        x_cal, _ = text_lines(data, 128, seed=2)
        out.append(
            Case(
                "ppocr-cls (pretrained)",
                ocr,
                EvalSet.from_arrays({"x": x_eval}, y_eval, batch_size=100),
                EvalSet.from_arrays({"x": x_cal}, batch_size=32).batches,
                SearchSettings(sensitivity_layers=6, distill_epochs=8),
            )
        )
    return out, skipped


def _ocr_model() -> bytes | None:
    import importlib.metadata as md

    try:
        files = md.files(OCR_PACKAGE) or []
    except md.PackageNotFoundError:
        return None
    found = [f for f in files if f.name == OCR_MODEL]
    return Path(str(found[0].locate())).read_bytes() if found else None


def text_lines(data: digits.DigitsData, n: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic 48x192 text lines of digit glyphs; label 1 when the line is rotated 180 deg."""
    rng = np.random.default_rng(seed)
    x = np.ones((n, 48, 192), np.float32)
    for k in range(n):
        col = int(rng.integers(2, 12))
        for j, i in enumerate(rng.integers(0, len(data.x_train), 10)):
            c0 = col + j * 18
            if c0 + 24 > 192:
                break
            glyph = np.kron(data.x_train[i].reshape(8, 8), np.ones((4, 3), np.float32))
            x[k, 8:40, c0 : c0 + 24] = np.minimum(x[k, 8:40, c0 : c0 + 24], 1 - glyph)
    y = rng.integers(0, 2, n).astype(np.int64)
    x[y == 1] = x[y == 1][:, ::-1, ::-1]
    return np.repeat(((x - 0.5) / 0.5)[:, None], 3, axis=1).astype(np.float32), y


def baseline(case: Case) -> dict[str, Any]:
    """``quantize_dynamic`` with default settings, measured like every candidate."""
    from onnxruntime.quantization import quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp, graphs.quiet():
        src, dst = Path(tmp) / "m.onnx", Path(tmp) / "q.onnx"
        src.write_bytes(case.model)
        quantize_dynamic(src, dst)
        data = dst.read_bytes()
    rec: dict[str, Any] = {
        "candidate": "ort-quantize_dynamic (baseline)",
        "techniques": ["ort-quantize_dynamic"],
        "size_bytes": len(data),
        "transfer_bytes": len(data),
    }
    ref = reference(case.model, case.eval_set)
    try:
        s = score(data, case.eval_set, ref)
        feed = {k: v[:1] for k, v in case.eval_set.batches[0].items()}
        p50 = LocalTimer().measure(data, feed, threads=1).p50_ms
        rec |= {
            "p50_ms": p50,
            "metric": str(s.metric),
            "value": s.value,
            "drop": s.drop,
            "passed_gate": s.drop <= 1.0,
            "verdict": "measured",
        }
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:160]
        rec |= {
            "p50_ms": None,
            "metric": str(ref.score.metric),
            "value": None,
            "drop": None,
            "passed_gate": False,
            "verdict": f"ONNX Runtime cannot run it: {first}",
        }
    return rec


def records(case: Case, result: SearchResult, base: dict[str, Any]) -> list[dict[str, Any]]:
    o = result.original
    out = []
    for c in (o, *result.candidates):
        out.append(
            {
                "model": case.name,
                "candidate": c.name,
                "techniques": list(c.techniques),
                "size_bytes": c.size_bytes,
                "transfer_bytes": c.transfer_bytes,
                "p50_ms": None if math.isnan(c.p50_ms) else c.p50_ms,
                "p50_ms_by_threads": {str(lat.threads): lat.p50_ms for lat in c.latency},
                "metric": c.metric,
                "value": None if math.isnan(c.value) else c.value,
                "drop": None if math.isnan(c.drop) else c.drop,
                "passed_gate": c.passed_gate,
                "chosen": result.winner is not None and c.name == result.winner.name,
                "verdict": c.verdict,
            }
        )
    out.append({"model": case.name, "chosen": False, **base})
    for r in out:
        assert isinstance(r["size_bytes"], int) and isinstance(r["transfer_bytes"], int)
        r["size_ratio"] = o.size_bytes / r["size_bytes"] if r["size_bytes"] else None
        r["transfer_ratio"] = o.size_bytes / r["transfer_bytes"] if r["transfer_bytes"] else None
        p50 = r.get("p50_ms")
        r["speedup"] = o.p50_ms / p50 if isinstance(p50, float) and p50 > 0 else None
    return out


def targets(rows: list[dict[str, Any]]) -> list[tuple[str, bool, str]]:
    def ok(r: dict[str, Any]) -> bool:
        return r["drop"] is not None and r["drop"] <= 1.0

    cnn = [r for r in rows if r["model"] == "digits-cnn"]
    quant = [r for r in cnn if ok(r) and r["techniques"] and set(r["techniques"]) <= QUANT_ONLY]
    best_q = max(quant, key=lambda r: r["size_ratio"], default=None)
    packed = [
        r
        for r in cnn
        if ok(r)
        and {"cluster", "huffman"} <= set(r["techniques"])
        and set(r["techniques"]) & {"prune", "prune-structured"}
    ]
    best_p = max(packed, key=lambda r: r["transfer_ratio"], default=None)
    chosen = next((r for r in cnn if r["chosen"]), None)
    out = [
        (
            "CNN: >= 4x smaller with quantization alone, <= 1 point",
            bool(best_q and best_q["size_ratio"] >= 4),
            f"{best_q['candidate']}: {best_q['size_ratio']:.1f}x" if best_q else "none",
        ),
        (
            "CNN: >= 10x smaller transfer with pruning + clustering + huffman, <= 1 point",
            bool(best_p and best_p["transfer_ratio"] >= 10),
            f"{best_p['candidate']}: {best_p['transfer_ratio']:.1f}x" if best_p else "none",
        ),
        (
            "CNN: chosen pipeline >= 1.3x faster than fp32",
            bool(chosen and chosen["speedup"] >= 1.3),
            f"{chosen['candidate']}: {chosen['speedup']:.2f}x" if chosen else "nothing chosen",
        ),
    ]
    for model in dict.fromkeys(r["model"] for r in rows):
        chosen = next((r for r in rows if r["model"] == model and r["chosen"]), None)
        base = next(r for r in rows if r["model"] == model and "baseline" in r["candidate"])
        if chosen is None:
            out.append(
                (
                    f"{model}: never worse than the baseline on size and accuracy",
                    True,
                    "nothing chosen",
                )
            )
            continue
        worse = (
            base["value"] is not None
            and chosen["transfer_bytes"] > base["transfer_bytes"]
            and chosen["value"] < base["value"]
        )
        base_value = "-" if base["value"] is None else f"{base['value']:.4f}"
        detail = (
            f"sent {chosen['transfer_bytes']:,} B, {chosen['value']:.4f} vs baseline "
            f"{base['transfer_bytes']:,} B, {base_value}"
        )
        out.append(
            (f"{model}: never worse than the baseline on size and accuracy", not worse, detail)
        )
    return out


def fmt(value: float | None, suffix: str = "x") -> str:
    return "-" if value is None else f"{value:.2f}{suffix}"


def main() -> int:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    data = digits.load_data()
    all_cases, skipped = cases(data)
    rows: list[dict[str, Any]] = []
    for case in all_cases:
        started = time.perf_counter()
        result = search(
            case.model, case.eval_set, calibration=case.calibration, settings=case.settings
        )
        rows += records(case, result, baseline(case))
        console.print(
            f"{case.name}: searched in {time.perf_counter() - started:.1f}s, winner "
            f"{result.winner.name if result.winner else 'none'}"
        )
    checks = targets(rows)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "records": rows,
                "skipped": skipped,
                "targets": [{"target": t, "passed": p, "detail": d} for t, p, d in checks],
            },
            indent=2,
        )
    )
    table = Table(
        title="Compression (ratios vs fp32; 'vs base' = vs ORT quantize_dynamic defaults)"
    )
    for col in (
        "model",
        "candidate",
        "size x",
        "transfer x",
        "speed x",
        "metric",
        "drop",
        "vs base size",
        "gate",
    ):
        table.add_column(col)
    for r in rows:
        base = next(b for b in rows if b["model"] == r["model"] and "baseline" in b["candidate"])
        table.add_row(
            r["model"],
            ("* " if r["chosen"] else "") + r["candidate"],
            fmt(r["size_ratio"]),
            fmt(r["transfer_ratio"]),
            fmt(r["speedup"]),
            r["metric"],
            fmt(r["drop"], ""),
            fmt(base["size_bytes"] / r["size_bytes"] if r["size_bytes"] else None),
            "PASS" if r["passed_gate"] else "FAIL",
        )
    console.print(table)
    for t, p, d in checks:
        console.print(f"[{'green' if p else 'red'}]{'PASS' if p else 'FAIL'}[/] {t} ({d})")
    for s in skipped:
        console.print(f"[yellow]skipped[/] {s}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
