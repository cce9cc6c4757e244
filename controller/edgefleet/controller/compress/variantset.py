"""A release's model variants for hardware classes, picked from the candidates a search ran.

``edgectl model compress --variants``: besides the winner, the search's own candidates give a
model per hardware class, judged on accuracy alone (a drop of at most the gate's), because
their speed on the timing host says little about another class (int8 pays off on CPUs with
VNNI or dot-product instructions, fp16 on GPUs, and either may be slower here):

    default        fp32 arithmetic: the winner when it is one, else the best passing
                   candidate of fp32 passes (pruning, clustering, low rank, distillation),
                   else the original. It must pass the whole gate, speed included.
    fp16           the ``fp16`` candidate, for devices with a GPU (CUDA, then the CPU)
    int8-vnni      the best int8 candidate (the winner when it is one), for x86 CPUs with
    int8-dotprod   VNNI and Arm CPUs with dot-product instructions: one model, two variants

The variants are in the order devices try them (a GPU first). A candidate must also pass
``onnx.checker`` and run in ONNX Runtime (``graphs.validate_model``). Nothing is chosen by a
speed measured here; ``notes`` say why a class has no variant.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import graphs, recipes
from .errors import InvalidInputError
from .evaluating import EvalSet
from .records import Technique

if TYPE_CHECKING:
    from .searching import CandidateRecord

FP32_ARITHMETIC = frozenset(
    {
        Technique.PRUNE,
        Technique.PRUNE_STRUCTURED,
        Technique.CLUSTER,
        Technique.HUFFMAN,
        Technique.LOWRANK,
        Technique.DISTILL,
    }
)
INT8 = frozenset({Technique.INT8_STATIC, Technique.INT8_DYNAMIC})
ORIGINAL = "original"


@dataclass(frozen=True)
class Class:
    """A hardware class's variant: its release name, requirements and providers."""

    name: str
    requires: tuple[str, ...]
    providers: tuple[str, ...] = ()


FP16_GPU = Class("fp16", ("gpu",), ("CUDAExecutionProvider", "CPUExecutionProvider"))
INT8_VNNI = Class("int8-vnni", ("cpu:vnni",))
INT8_DOTPROD = Class("int8-dotprod", ("cpu:dotprod",))


@dataclass(frozen=True)
class Pick:
    """A candidate chosen for a class (``cls`` None: the release's default model).
    ``model``/``transfer`` are None for the original (the source version, already stored)."""

    cls: Class | None
    candidate: str
    model: bytes | None
    transfer: bytes | None
    drop: float


@dataclass(frozen=True)
class VariantSet:
    default: Pick
    variants: tuple[Pick, ...]
    notes: tuple[str, ...]


def _kinds(techniques: Sequence[str]) -> set[str]:
    return {str(t) for t in techniques}


def pick(
    records: Sequence[CandidateRecord],
    outputs: Mapping[str, recipes.PipelineResult],
    *,
    winner: str | None,
    ranked: Sequence[str],
    max_drop: float,
    eval_set: EvalSet,
) -> VariantSet:
    """The default and the variants from ``records`` (the search's, in the order run) with
    their ``outputs``; ``ranked``: the names of the candidates that passed the whole gate and
    beat the original, best first (the search's ranking); ``winner``: the validated winner."""
    notes: list[str] = []
    valid: dict[str, bool] = {}

    def usable(name: str) -> bool:
        if name not in valid:
            try:
                graphs.validate_model(outputs[name].model, eval_set.batches)
                valid[name] = True
            except InvalidInputError as exc:
                notes.append(f"{name} fails validation: {exc}")
                valid[name] = False
        return valid[name]

    accurate = [
        r for r in records if r.name in outputs and not math.isnan(r.drop) and r.drop <= max_drop
    ]
    order = {name: i for i, name in enumerate(ranked)}

    def best(
        kinds: frozenset[str], *, needs: frozenset[str] = frozenset()
    ) -> CandidateRecord | None:
        fits = [
            r
            for r in accurate
            if _kinds(r.techniques) <= kinds and (not needs or _kinds(r.techniques) & needs)
        ]
        # the winner, then those that passed the whole gate in the search's ranking, then the
        # rest in the order run (cheapest first)
        fits.sort(key=lambda r: (r.name != winner, order.get(r.name, len(order))))
        return next((r for r in fits if usable(r.name)), None)

    fp32 = best(FP32_ARITHMETIC)
    default = (
        _pick(None, fp32, outputs)
        if fp32 is not None and fp32.passed_gate and fp32.name in order
        else Pick(None, ORIGINAL, None, None, 0.0)
    )
    variants: list[Pick] = []
    fp16 = best(frozenset({Technique.FP16}))
    if fp16 is not None:
        variants.append(_pick(FP16_GPU, fp16, outputs))
    else:
        notes.append(_none("fp16", records, {Technique.FP16}, max_drop))
    int8 = best(FP32_ARITHMETIC | INT8, needs=INT8)
    if int8 is not None:
        variants += [_pick(INT8_VNNI, int8, outputs), _pick(INT8_DOTPROD, int8, outputs)]
    else:
        notes.append(_none("int8", records, INT8, max_drop))
    return VariantSet(default, tuple(variants), tuple(notes))


def _pick(
    cls: Class | None, r: CandidateRecord, outputs: Mapping[str, recipes.PipelineResult]
) -> Pick:
    out = outputs[r.name]
    return Pick(cls, r.name, out.model, out.transfer, r.drop)


def _none(what: str, records: Sequence[CandidateRecord], kinds: Set[str], max_drop: float) -> str:
    tried = [r for r in records if _kinds(r.techniques) & kinds]
    if not tried:
        return f"no {what} variant: the recipe has no {what} candidate"
    return (
        f"no {what} variant: no {what} candidate kept a drop <= {max_drop:g} points ("
        + "; ".join(f"{r.name}: {r.verdict}" for r in tried)
        + ")"
    )
