"""Recipes: named pipelines of passes, parsed from text, and the runner that applies one.

A pipeline is ``+``-joined steps, a recipe is ``,``-joined pipelines or ``auto``::

    int8-dynamic | int8-static[-minmax|-entropy|-percentile][-pertensor] | fp16 | int4-weights
    prune-S (global, S percent) | prune-layer-S | prune-structured-S | cluster-Bbit | huffman
    lowrank-E (energy, e.g. 0.9) | lowrank-auto (by the accuracy budget) | distill[-W]

``auto`` is a list of pipelines that the search runs cheapest first (``cost``: the expected
duration in evaluations of the original, so that a time budget is spent on the candidates most
likely to finish): the one-shot quantizations and fp16, then pruning, clustering and entropy
coding, then static quantization (calibration runs), structured pruning, low-rank search and
distillation (training) last.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from edgefleet.common import packing

from . import (
    clustering,
    distilling,
    dynamic_quant,
    fp16,
    int4,
    lowrank,
    pruning,
    static_quant,
    structured,
)
from .errors import InvalidInputError, PassSkippedError
from .graphs import Feed
from .records import Compressed, Param, PassRecord, Technique

AUTO: tuple[str, ...] = (
    "prune-structured-50+int8-static",
    "prune-structured-50+prune-50+cluster-4bit+huffman",
    "prune-structured-30+cluster-5bit+huffman",
    "distill",
    "prune-structured-50",
    "prune-structured-30",
    "prune-70+cluster-4bit+huffman",
    "int4-weights+int8-static",
    "int8-static",
    "int8-static-entropy",
    "int8-dynamic",
    "int4-weights",
    "lowrank-auto",
    "cluster-4bit+huffman",
    "fp16",
)
# Expected cost of a step, in evaluations of the original on the eval set (the pass itself plus
# what it runs: calibration, per-layer sensitivity, a search over ranks, student training).
_COST = {
    Technique.INT8_DYNAMIC: 1.5,
    Technique.FP16: 1.5,
    Technique.INT4_WEIGHTS: 2.0,
    Technique.PRUNE: 6.0,
    Technique.CLUSTER: 2.5,
    Technique.HUFFMAN: 0.5,
    Technique.INT8_STATIC: 5.0,
    Technique.PRUNE_STRUCTURED: 8.0,
    Technique.LOWRANK: 10.0,
    Technique.DISTILL: 30.0,
}


def cost(pipeline: Pipeline) -> float:
    """Expected duration of a candidate, in evaluations of the original (its own evaluation
    included); ``auto`` runs cheapest first and the time budget uses it to estimate."""
    return 1.0 + sum(_COST.get(s.technique, 2.0) for s in pipeline.steps)


# Techniques that must come after others in a pipeline: a step may not follow any of these.
_LATER = {
    Technique.HUFFMAN: set(Technique) - {Technique.HUFFMAN},
    Technique.CLUSTER: {
        Technique.INT8_DYNAMIC,
        Technique.INT8_STATIC,
        Technique.INT4_WEIGHTS,
        Technique.FP16,
    },
}


@dataclass(frozen=True)
class Step:
    technique: Technique
    params: dict[str, Param] = field(default_factory=dict)
    text: str = ""


@dataclass(frozen=True)
class Pipeline:
    name: str
    steps: tuple[Step, ...]


@dataclass(frozen=True)
class PipelineResult:
    model: bytes
    transfer: bytes  # what is sent to a device: the packed container, or the model itself
    records: tuple[PassRecord, ...]


@dataclass(frozen=True)
class Context:
    """What passes need besides the model: calibration feeds and an accuracy check."""

    calibration: Sequence[Feed] = ()
    passes_gate: Callable[[bytes], bool] | None = None
    distill_epochs: int = 40


_PATTERNS: tuple[tuple[str, Callable[[re.Match[str]], Step]], ...] = (
    (r"int8-dynamic", lambda m: Step(Technique.INT8_DYNAMIC)),
    (
        r"int8-static(?:-(minmax|entropy|percentile))?(-pertensor)?",
        lambda m: Step(
            Technique.INT8_STATIC,
            {"method": m.group(1) or "minmax", "per_channel": not m.group(2)},
        ),
    ),
    (r"fp16", lambda m: Step(Technique.FP16)),
    (r"int4-weights", lambda m: Step(Technique.INT4_WEIGHTS)),
    (r"prune-structured-(\d+)", lambda m: Step(Technique.PRUNE_STRUCTURED, {"amount": _pct(m)})),
    (
        r"prune-layer-(\d+)",
        lambda m: Step(Technique.PRUNE, {"sparsity": _pct(m), "scope": "layer"}),
    ),
    (r"prune-(\d+)", lambda m: Step(Technique.PRUNE, {"sparsity": _pct(m), "scope": "global"})),
    (r"cluster-(\d)bit", lambda m: Step(Technique.CLUSTER, {"bits": int(m.group(1))})),
    (r"huffman", lambda m: Step(Technique.HUFFMAN)),
    (r"lowrank-auto", lambda m: Step(Technique.LOWRANK, {"energy": "auto"})),
    (r"lowrank-(0?\.\d+|1\.0)", lambda m: Step(Technique.LOWRANK, {"energy": float(m.group(1))})),
    (
        r"distill(?:-(0?\.\d+))?",
        lambda m: Step(Technique.DISTILL, {"width": float(m.group(1) or 0.5)}),
    ),
)


def _pct(m: re.Match[str]) -> float:
    value = int(m.group(1))
    if not 0 < value < 100:
        raise InvalidInputError(f"{m.group(0)}: the percentage must be 1..99")
    return value / 100


def parse_recipe(text: str) -> tuple[Pipeline, ...]:
    """``auto``, or pipelines separated by commas; raises ``InvalidInputError`` naming the step."""
    names = (
        AUTO if text.strip() == "auto" else tuple(p.strip() for p in text.split(",") if p.strip())
    )
    if not names:
        raise InvalidInputError("empty recipe")
    return tuple(parse_pipeline(name) for name in names)


def parse_pipeline(name: str) -> Pipeline:
    steps: list[Step] = []
    for token in name.split("+"):
        for pattern, make in _PATTERNS:
            m = re.fullmatch(pattern, token.strip())
            if m:
                step = make(m)
                steps.append(Step(step.technique, step.params, token.strip()))
                break
        else:
            raise InvalidInputError(f"unknown step {token!r} in recipe {name!r}")
    for i, step in enumerate(steps):
        after = {s.technique for s in steps[i + 1 :]}
        if after & _LATER.get(step.technique, set()):
            raise InvalidInputError(
                f"{step.text} must come after {', '.join(sorted(after))} in {name!r}"
            )
    return Pipeline(name, tuple(steps))


def run_pipeline(model: bytes, pipeline: Pipeline, ctx: Context) -> PipelineResult:
    """Apply each step in order; a step that cannot handle the model raises PassSkippedError."""
    records: list[PassRecord] = []
    transfer: bytes | None = None
    for step in pipeline.steps:
        if step.technique is Technique.HUFFMAN:
            transfer = packing.encode(model)
            records.append(
                PassRecord(
                    Technique.HUFFMAN,
                    {},
                    "edgefleet packing (Huffman + LZMA)",
                    len(model),
                    len(model),
                    notes=(f"transfer {len(transfer)} bytes",),
                    stats={"transfer_bytes": float(len(transfer))},
                )
            )
            continue
        out = apply_step(model, step, ctx)
        model = out.model
        records.append(out.record)
    return PipelineResult(model, transfer if transfer is not None else model, tuple(records))


def apply_step(model: bytes, step: Step, ctx: Context) -> Compressed:
    p = step.params
    match step.technique:
        case Technique.INT8_DYNAMIC:
            return dynamic_quant.quantize_int8_dynamic(model)
        case Technique.INT8_STATIC:
            _need(ctx.calibration, step)
            return static_quant.quantize_int8_static(
                model,
                ctx.calibration,
                method=static_quant.CalibrationMethod(str(p["method"])),
                per_channel=bool(p["per_channel"]),
            )
        case Technique.FP16:
            return fp16.convert_fp16(model)
        case Technique.INT4_WEIGHTS:
            return int4.quantize_int4_weights(model)
        case Technique.PRUNE:
            scope = pruning.Scope(str(p["scope"]))
            return pruning.prune_magnitude(model, sparsity=_num(p["sparsity"]), scope=scope)
        case Technique.PRUNE_STRUCTURED:
            return structured.prune_structured(
                model, amount=_num(p["amount"]), calibration=ctx.calibration
            )
        case Technique.CLUSTER:
            return clustering.cluster_weights(model, bits=int(_num(p["bits"])))
        case Technique.LOWRANK:
            if p["energy"] == "auto":
                if ctx.passes_gate is None:
                    raise PassSkippedError(
                        Technique.LOWRANK, "lowrank-auto needs an accuracy check"
                    )
                return lowrank.factorise_by_budget(model, ctx.passes_gate)
            return lowrank.factorise_lowrank(model, energy=_num(p["energy"]))
        case Technique.DISTILL:
            _need(ctx.calibration, step)
            return distilling.distill(
                model, ctx.calibration, width=_num(p["width"]), epochs=ctx.distill_epochs
            )
    raise InvalidInputError(f"no pass for {step.technique}")  # pragma: no cover


def _num(value: Param) -> float:
    if isinstance(value, str) or value is None:
        raise InvalidInputError(f"expected a number, got {value!r}")
    return float(value)


def _need(calibration: Sequence[Feed], step: Step) -> None:
    if not calibration:
        raise PassSkippedError(step.technique, f"{step.text} needs calibration data")
