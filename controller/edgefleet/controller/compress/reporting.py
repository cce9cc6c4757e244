"""The compression report, as JSON (stored with the release) and Markdown (for people).

Both list every candidate with its techniques and parameters, size, transfer size, p50
latency per thread count, metric and drop, pass/fail with the reason, the passes' notes (traps
handled, techniques that did not pay off) and per-layer sensitivity.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .searching import CandidateRecord, SearchResult


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
        "metric": c.metric,
        "value": _num(c.value),
        "drop": _num(c.drop),
        "passed_gate": c.passed_gate,
        "verdict": c.verdict,
        "notes": list(c.notes),
        "sensitivity": [asdict(s) for s in c.sensitivity],
        "seconds": round(c.seconds, 3),
    }


def report_json(result: SearchResult) -> str:
    doc = {
        "objective": str(result.objective),
        "max_drop": result.max_drop,
        "timer": result.timer,
        "passed": result.passed,
        "winner": result.winner.name if result.winner else None,
        "metric": result.original.metric,
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
    head = [
        "candidate",
        "size",
        "transfer",
        *(f"p50 {t}t (ms)" for t in threads),
        o.metric,
        "drop",
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
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for c in (o, *result.candidates):
        lats = [f"{lat.p50_ms:.3f}" for lat in c.latency] or ["-"] * len(threads)
        size = f"{c.size_bytes:,} ({o.size_bytes / c.size_bytes:.1f}x)" if c.size_bytes else "-"
        transfer = (
            f"{c.transfer_bytes:,} ({o.size_bytes / c.transfer_bytes:.1f}x)"
            if c.transfer_bytes
            else "-"
        )
        value = "-" if math.isnan(c.value) else f"{c.value:.4f}"
        drop = "-" if math.isnan(c.drop) else f"{c.drop:.2f}"
        gate = "PASS" if c.passed_gate and c is not o else ("ref" if c is o else "FAIL")
        lines.append(
            "| "
            + " | ".join(
                [
                    c.name,
                    size,
                    transfer,
                    *lats,
                    value,
                    drop,
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


def _num(x: float) -> float | None:
    return None if math.isnan(x) else x
