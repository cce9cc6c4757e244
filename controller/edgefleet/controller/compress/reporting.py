"""The compression report, as JSON (stored with the release) and Markdown (for people).

Both list every candidate with its techniques and parameters, size, transfer size, p50
latency per thread count, the speed ratio to the original per thread count (interleaved
timing, with its 95% confidence interval and rounds), metric and drop, pass/fail with the
reason, the passes' notes (traps handled, techniques that did not pay off) and per-layer
sensitivity. Both name the metric used for each judged output (JSON ``metrics``, and per
candidate ``outputs`` with value and drop; the Markdown a line, and a drop column per output
when there are several).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .searching import CandidateRecord, SearchResult
    from .speedstats import SpeedRatio


def candidate_dict(c: CandidateRecord) -> dict[str, Any]:
    return {
        "candidate": c.name,
        "techniques": list(c.techniques),
        "steps": [
            {
                "technique": str(s.technique),
                "params": s.params,
                "tool": s.tool,
                "layers": [asdict(layer) for layer in s.layers],
                "stats": s.stats,
            }
            for s in c.steps
        ],
        "size_bytes": c.size_bytes,
        "transfer_bytes": c.transfer_bytes,
        "p50_ms": _num(c.p50_ms),
        "latency": [
            {"threads": lat.threads, "p50_ms": lat.p50_ms, "p90_ms": lat.p90_ms, "runs": lat.runs}
            for lat in c.latency
        ],
        "speed": [_speed_dict(s) for s in c.speed],
        "speed_ratio": _num(c.speed_ratio.ratio) if c.speed_ratio else None,
        "speed_ratio_nt": _num(c.speed_ratio_nt.ratio) if c.speed_ratio_nt else None,
        "metric": c.metric,
        "value": _num(c.value),
        "drop": _num(c.drop),
        "outputs": [
            {"output": o.output, "metric": o.metric, "value": _num(o.value), "drop": _num(o.drop)}
            for o in c.outputs
        ],
        "passed_gate": c.passed_gate,
        "verdict": c.verdict,
        "notes": list(c.notes),
        "sensitivity": [asdict(s) for s in c.sensitivity],
        "seconds": round(c.seconds, 3),
    }


def _speed_dict(s: SpeedRatio) -> dict[str, Any]:
    return {
        "threads": s.threads,
        "ratio": _num(s.ratio),
        "low": _num(s.low),
        "high": _num(s.high),
        "rounds": s.rounds,
        "confidence": s.confidence,
        "coverage": round(s.coverage, 4),
        "faster": s.faster,
        "slower": s.slower,
        "seconds": round(s.seconds, 3),
    }


def report_json(result: SearchResult) -> str:
    doc = {
        "objective": str(result.objective),
        "max_drop": result.max_drop,
        "timer": result.timer,
        "passed": result.passed,
        "winner": result.winner.name if result.winner else None,
        "metric": result.original.metric,
        "metrics": {o.output: o.metric for o in result.original.outputs},
        "elapsed_s": round(result.elapsed_s, 3),
        "time_budget_s": result.budget_s or None,
        "stopped_by": result.stopped or None,
        "original": candidate_dict(result.original),
        "candidates": [candidate_dict(c) for c in result.candidates],
        "golden": None
        if result.golden is None
        else {
            "count": result.golden.rows,
            "tolerance": result.golden.tolerance,
            "tolerances": result.golden.tolerances,
            "broadcast": sorted(result.golden.broadcast),
        },
        "golden_note": result.golden_note,
    }
    return json.dumps(doc, indent=2, allow_nan=False)


def report_markdown(result: SearchResult) -> str:
    o = result.original
    threads = [lat.threads for lat in o.latency]
    judged = o.outputs if len(o.outputs) > 1 else ()
    head = [
        "candidate",
        "size",
        "transfer",
        *(f"p50 {t}t (ms)" for t in threads),
        *(f"speed {t}t" for t in threads),
        o.metric,
        "drop",
        *(f"drop {j.output} ({j.metric})" for j in judged),
        "s",
        "gate",
    ]
    budget = f", budget {result.budget_s:.0f} s" if result.budget_s else ""
    lines = [
        f"# Compression report ({result.objective}, metric {o.metric}, max drop "
        f"{result.max_drop:g} points, timed on {result.timer})",
        "",
        f"**Winner: {result.winner.name}**"
        if result.winner
        else "**No candidate passed the gate; nothing to register.**",
        "",
        f"Search took {result.elapsed_s:.1f} s{budget}"
        + (f"; candidates left out by {result.stopped}." if result.stopped else "."),
        f"Golden data: {result.golden_note or 'none'}.",
        "Metric per output: "
        + ("; ".join(f"`{j.output}`: {j.metric}" for j in o.outputs) or o.metric)
        + (" (a candidate's drop is the worst of them)." if judged else "."),
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for c in (o, *result.candidates):
        lats = [f"{lat.p50_ms:.3f}" for lat in c.latency] or ["-"] * len(threads)
        by_threads = {s.threads: s for s in c.speed}
        speeds = ["1x (ref)" if c is o else _speed_cell(by_threads.get(t)) for t in threads]
        size = f"{c.size_bytes:,} ({o.size_bytes / c.size_bytes:.1f}x)" if c.size_bytes else "-"
        transfer = (
            f"{c.transfer_bytes:,} ({o.size_bytes / c.transfer_bytes:.1f}x)"
            if c.transfer_bytes
            else "-"
        )
        value = "-" if math.isnan(c.value) else f"{c.value:.4f}"
        drop = "-" if math.isnan(c.drop) else f"{c.drop:.2f}"
        gate = "PASS" if c.passed_gate and c is not o else ("ref" if c is o else "FAIL")
        per_output = {p.output: p.drop for p in c.outputs}
        drops = [
            "-" if math.isnan(per_output.get(j.output, math.nan)) else f"{per_output[j.output]:.2f}"
            for j in judged
        ]
        lines.append(
            "| "
            + " | ".join(
                [
                    c.name,
                    size,
                    transfer,
                    *lats,
                    *speeds,
                    value,
                    drop,
                    *drops,
                    f"{c.seconds:.1f}",
                    f"{gate}: {c.verdict}",
                ]
            )
            + " |"
        )
    for c in result.candidates:
        if c.notes:
            lines += ["", f"### {c.name}", *(f"- {n}" for n in dict.fromkeys(c.notes))]
        if c.sensitivity:
            lines += [
                "",
                f"Per-layer sensitivity ({c.name}):",
                "",
                "| layer | technique | params | drop |",
                "|---|---|---|---|",
            ]
            lines += [
                f"| {s.layer} | {s.technique} | {s.params:,} | {s.drop:.2f} |"
                for s in c.sensitivity
            ]
    return "\n".join(lines) + "\n"


def _speed_cell(s: SpeedRatio | None) -> str:
    """``0.62x [0.60, 0.65] faster``: the ratio (< 1 faster), its interval, the verdict."""
    if s is None or s.rounds == 0:
        return "-"
    verdict = "faster" if s.faster else "slower" if s.slower else "same"
    return f"{s.ratio:.2f}x [{s.low:.2f}, {s.high:.2f}] {verdict}"


def _num(x: float) -> float | None:
    return None if math.isnan(x) else x
