"""Unstructured magnitude pruning: zero the smallest weights of Conv/Gemm/MatMul layers.

``scope`` "global" ranks all weights together (layers with many small weights lose more);
"layer" prunes every layer to the same sparsity. The ONNX file does not shrink and ORT's dense
kernels do not speed up: zeros pay off once the weights are clustered and entropy coded for
transfer (``cluster`` + ``huffman``), or on runtimes with sparse kernels.
"""

from __future__ import annotations

from enum import StrEnum

import numpy as np

from . import graphs
from .errors import InvalidInputError, PassSkippedError
from .records import Compressed, LayerChange, PassRecord, Technique


class Scope(StrEnum):
    GLOBAL = "global"
    LAYER = "layer"


def prune_magnitude(model: bytes, *, sparsity: float, scope: Scope = Scope.GLOBAL) -> Compressed:
    if not 0.0 < sparsity < 1.0:
        raise InvalidInputError(f"sparsity must be between 0 and 1, got {sparsity}")
    proto = graphs.load(model)
    inits = graphs.initializers(proto)
    layers = [w for w in graphs.weight_layers(proto) if np.prod(w.shape) >= 16]
    if not layers:
        raise PassSkippedError(
            Technique.PRUNE,
            "no Conv/Gemm/MatMul with constant fp32 weights" + graphs.subgraph_note(proto),
        )
    weights = {w.weight: graphs.array(inits[w.weight]) for w in layers}
    if scope is Scope.GLOBAL:
        everything = np.concatenate([np.abs(a).ravel() for a in weights.values()])
        cut = float(np.quantile(everything, sparsity))
        thresholds = dict.fromkeys(weights, cut)
    else:
        thresholds = {k: float(np.quantile(np.abs(a), sparsity)) for k, a in weights.items()}
    changes = []
    zeros = total = 0
    for w in layers:
        a = weights[w.weight]
        pruned = np.where(np.abs(a) <= thresholds[w.weight], np.float32(0), a).astype(np.float32)
        graphs.replace(proto, w.weight, pruned)
        z = int((pruned == 0).sum())
        zeros, total = zeros + z, total + pruned.size
        changes.append(
            LayerChange(w.node, f"{(a == 0).mean():.0%} zeros", f"{z / a.size:.0%} zeros")
        )
    data = graphs.dump(proto)
    return Compressed(
        data,
        PassRecord(
            Technique.PRUNE,
            {"sparsity": sparsity, "scope": str(scope)},
            "numpy (magnitude threshold)",
            len(model),
            len(data),
            tuple(changes),
            (
                "zeros shrink the transfer only after cluster + huffman; "
                "dense ORT kernels run as before",
            ),
            {"sparsity": zeros / total},
        ),
    )
