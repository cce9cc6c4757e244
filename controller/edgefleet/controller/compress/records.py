"""What a compression pass did, as data: the record every pass returns next to its model.

Passes are pure functions ``model bytes -> Compressed(model bytes, PassRecord)``; the search
and the reports read only these records, never the passes' internals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

Param = str | int | float | bool | None


class Technique(StrEnum):
    INT8_DYNAMIC = "int8-dynamic"
    INT8_STATIC = "int8-static"
    FP16 = "fp16"
    INT4_WEIGHTS = "int4-weights"
    PRUNE = "prune"  # unstructured magnitude pruning
    PRUNE_STRUCTURED = "prune-structured"
    CLUSTER = "cluster"
    HUFFMAN = "huffman"
    LOWRANK = "lowrank"
    DISTILL = "distill"


@dataclass(frozen=True)
class LayerChange:
    """One weight layer touched by a pass: ``before``/``after`` are short human strings."""

    layer: str
    before: str
    after: str


@dataclass(frozen=True)
class PassRecord:
    technique: Technique
    params: dict[str, Param]
    tool: (
        str  # the library function that did the work, e.g. onnxruntime.quantization.quantize_static
    )
    size_before: int
    size_after: int
    layers: tuple[LayerChange, ...] = ()
    notes: tuple[str, ...] = ()  # traps detected and handled, layers left alone and why
    stats: dict[str, float] = field(default_factory=dict)  # e.g. macs_before/macs_after, sparsity


@dataclass(frozen=True)
class Compressed:
    model: bytes
    record: PassRecord


def shape_text(shape: tuple[int, ...] | list[int]) -> str:
    return "x".join(str(d) for d in shape) or "scalar"
