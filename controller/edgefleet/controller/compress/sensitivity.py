"""Per-layer sensitivity: how many points the metric drops when only one layer is compressed.

Simulated in fp32 so it stays cheap (one evaluation per layer, no quantizer run): quantization
is fake-quantizing that layer's weights (int8 per output channel, int8 per tensor for dynamic,
int4 per output channel), pruning is zeroing its smallest weights or its weakest output
channels. The largest ``max_layers`` layers are measured; the report lists the rest as not
measured rather than guessing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from . import evaluating, graphs
from .evaluating import EvalSet, Reference
from .records import Technique

SIMULATED = {
    Technique.INT8_STATIC,
    Technique.INT8_DYNAMIC,
    Technique.INT4_WEIGHTS,
    Technique.PRUNE,
    Technique.PRUNE_STRUCTURED,
}


@dataclass(frozen=True)
class LayerSensitivity:
    layer: str
    technique: str  # e.g. "int8-static", "prune-structured-50"
    params: int  # weight count of the layer
    drop: float  # points lost when only this layer is compressed


def layer_sensitivity(
    model: bytes,
    eval_set: EvalSet,
    ref: Reference,
    *,
    technique: Technique,
    amount: float = 0.0,
    max_layers: int = 12,
) -> tuple[LayerSensitivity, ...]:
    proto = graphs.load(model)
    layers = sorted(graphs.weight_layers(proto), key=lambda w: -int(np.prod(w.shape)))
    label = f"{technique}-{round(amount * 100)}" if amount else str(technique)
    out = []
    for layer in layers[:max_layers]:
        copy = graphs.load(model)
        w = graphs.array(graphs.initializers(copy)[layer.weight]).astype(np.float32)
        node = next(n for n in copy.graph.node if n.name == layer.node)
        axis = (
            1
            if layer.op == "MatMul" or (layer.op == "Gemm" and not graphs.attr(node, "transB", 0))
            else 0
        )
        graphs.replace(copy, layer.weight, simulate(w, technique, amount=amount, axis=axis))
        score = evaluating.score(graphs.dump(copy), eval_set, ref)
        out.append(LayerSensitivity(layer.node, label, int(w.size), round(score.drop, 3)))
    return tuple(out)


def simulate(
    w: npt.NDArray[np.float32], technique: Technique, *, amount: float, axis: int
) -> npt.NDArray[Any]:
    """The layer's weights as the technique would leave them, still in fp32."""
    moved = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    if technique in (Technique.INT8_STATIC, Technique.INT8_DYNAMIC, Technique.INT4_WEIGHTS):
        levels = 7 if technique is Technique.INT4_WEIGHTS else 127
        per_tensor = technique is Technique.INT8_DYNAMIC
        peak = np.abs(moved).max() if per_tensor else np.abs(moved).max(axis=1, keepdims=True)
        scale = np.maximum(peak, 1e-12) / levels
        moved = np.round(moved / scale).clip(-levels, levels) * scale
    elif technique is Technique.PRUNE:
        moved = np.where(np.abs(moved) <= np.quantile(np.abs(moved), amount), 0, moved)
    elif technique is Technique.PRUNE_STRUCTURED:
        norms = np.abs(moved).sum(axis=1)
        drop = np.argsort(norms)[: round(len(norms) * amount)]
        moved = moved.copy()
        moved[drop] = 0
    restored = moved.reshape(np.moveaxis(w, axis, 0).shape)
    return np.moveaxis(restored, 0, axis).astype(np.float32)
