"""Weight clustering (Deep Compression's weight sharing): 2^bits shared values per layer.

1-D k-means per Conv/Gemm/MatMul weight, initialised linearly between min and max (Han et al.
found linear initialisation keeps the rare large weights that matter). Zeros left by pruning
stay exactly zero: one of the 2^bits values is 0 and only the non-zeros are clustered. The
model keeps its fp32 graph; what shrinks is the entropy of the weights, which ``packing``
turns into fewer bytes sent to a device.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from . import graphs
from .errors import InvalidInputError, PassSkippedError
from .records import Compressed, LayerChange, PassRecord, Technique

F32 = npt.NDArray[np.float32]


def cluster_weights(model: bytes, *, bits: int = 4, iterations: int = 25) -> Compressed:
    if not 1 <= bits <= 8:
        raise InvalidInputError(f"cluster bits must be 1..8, got {bits}")
    proto = graphs.load(model)
    inits = graphs.initializers(proto)
    k = 2**bits
    layers = [w for w in graphs.weight_layers(proto) if int(np.prod(w.shape)) > 4 * k]
    if not layers:
        raise PassSkippedError(
            Technique.CLUSTER,
            f"no weight layer with more than {4 * k} values" + graphs.subgraph_note(proto),
        )
    changes = []
    errors = []
    for w in layers:
        a = graphs.array(inits[w.weight]).astype(np.float32)
        shared = kmeans_1d(a.ravel(), k, iterations=iterations).reshape(a.shape)
        graphs.replace(proto, w.weight, shared)
        rel = float(np.linalg.norm(shared - a) / max(float(np.linalg.norm(a)), 1e-12))
        errors.append(rel)
        changes.append(
            LayerChange(w.node, f"{len(np.unique(a))} values", f"{len(np.unique(shared))} values")
        )
    data = graphs.dump(proto)
    return Compressed(
        data,
        PassRecord(
            Technique.CLUSTER,
            {"bits": bits, "clusters": k},
            "numpy (1-D k-means)",
            len(model),
            len(data),
            tuple(changes),
            ("the ONNX file keeps fp32 weights; the transfer shrinks once huffman packs them",),
            {"max_relative_error": max(errors)},
        ),
    )


def kmeans_1d(values: F32, k: int, *, iterations: int = 25) -> F32:
    """Each value replaced by its cluster's centroid; exact zeros stay zero."""
    out = values.astype(np.float32).copy()
    nonzero = values != 0
    keep_zero = not nonzero.all()
    data = values[nonzero].astype(np.float64)
    slots = k - 1 if keep_zero else k
    if data.size == 0 or slots <= 0:
        return out
    lo, hi = float(data.min()), float(data.max())
    centroids = np.linspace(lo, hi, slots) if hi > lo else np.array([lo])
    order = np.sort(data)
    for _ in range(iterations):
        edges = (centroids[1:] + centroids[:-1]) / 2
        idx = np.searchsorted(edges, order)
        sums = np.bincount(idx, weights=order, minlength=len(centroids))
        counts = np.bincount(idx, minlength=len(centroids))
        moved = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        if np.allclose(moved, centroids):
            break
        centroids = np.sort(moved)
    edges = (centroids[1:] + centroids[:-1]) / 2
    out[nonzero] = centroids[np.searchsorted(edges, data)].astype(np.float32)
    return out
