"""Low-rank factorisation of Gemm/MatMul weights by truncated SVD.

``W (m x n) ~= A (m x r) @ B (r x n)``, with ``r`` the smallest rank keeping ``energy`` of the
squared singular values; the node becomes MatMul(X, A) followed by the original op on B. A
layer is factorised only where ``r * (m + n)`` is below ``max_cost`` of ``m * n`` (otherwise it
would grow or barely shrink and run slower). ``factorise_by_budget`` picks the energy instead:
the lowest of a ladder whose model still passes the caller's accuracy check.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from onnx import helper, numpy_helper

from . import graphs
from .errors import InvalidInputError, PassSkippedError
from .records import Compressed, LayerChange, PassRecord, Technique

ENERGY_LADDER = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99)


def factorise_lowrank(model: bytes, *, energy: float = 0.9, max_cost: float = 0.8) -> Compressed:
    if not 0.0 < energy <= 1.0:
        raise InvalidInputError(f"retained energy must be in (0, 1], got {energy}")
    proto = graphs.load(model)
    inits = graphs.initializers(proto)
    changes: list[LayerChange] = []
    skipped: list[str] = []
    nodes = []
    for node in proto.graph.node:
        w = _weight(node, inits)
        if w is None:
            nodes.append(node)
            continue
        m, n = w.shape
        u, s, vt = np.linalg.svd(w.astype(np.float64), full_matrices=False)
        kept = np.cumsum(s**2) / max(float((s**2).sum()), 1e-30)
        r = int(np.searchsorted(kept, energy - 1e-12) + 1)
        if r * (m + n) > max_cost * m * n:
            skipped.append(f"{node.name} (rank {r} of {min(m, n)} saves too little)")
            nodes.append(node)
            continue
        root = np.sqrt(s[:r])
        a, b = (u[:, :r] * root).astype(np.float32), (root[:, None] * vt[:r]).astype(np.float32)
        if node.op_type == "Gemm" and graphs.attr(node, "transB", 0):
            b = np.ascontiguousarray(b.T)
        proto.graph.initializer.extend(
            [
                numpy_helper.from_array(a, f"{node.name}.lr_a"),
                numpy_helper.from_array(b, f"{node.name}.lr_b"),
            ]
        )
        mid = f"{node.output[0]}.lowrank"
        nodes.append(
            helper.make_node(
                "MatMul", [node.input[0], f"{node.name}.lr_a"], [mid], f"{node.name}.lr"
            )
        )
        second = helper.make_node(
            node.op_type, [mid, f"{node.name}.lr_b", *node.input[2:]], list(node.output), node.name
        )
        second.attribute.extend(node.attribute)
        nodes.append(second)
        changes.append(LayerChange(node.name, f"{m}x{n}", f"{m}x{r} @ {r}x{n}"))
    if not changes:
        why = "; ".join(skipped) or "no Gemm/MatMul with a 2-D constant weight"
        raise PassSkippedError(Technique.LOWRANK, why + graphs.subgraph_note(proto))
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    used = {i for nd in proto.graph.node for i in nd.input}
    keep = [t for t in proto.graph.initializer if t.name in used]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep)
    data = graphs.dump(proto)
    notes = tuple(f"left as is: {s}" for s in skipped)
    return Compressed(
        data,
        PassRecord(
            Technique.LOWRANK,
            {"energy": energy, "max_cost": max_cost},
            "numpy.linalg.svd",
            len(model),
            len(data),
            tuple(changes),
            notes,
        ),
    )


def factorise_by_budget(
    model: bytes,
    passes: Callable[[bytes], bool],
    *,
    ladder: Sequence[float] = ENERGY_LADDER,
) -> Compressed:
    """The most aggressive energy on the ladder whose model ``passes`` the accuracy check."""
    last: PassSkippedError | None = None
    for energy in sorted(ladder):
        try:
            out = factorise_lowrank(model, energy=energy)
        except PassSkippedError as exc:
            last = exc
            continue
        if passes(out.model):
            rec = out.record
            params = {**rec.params, "chosen_by": "accuracy budget"}
            return Compressed(out.model, PassRecord(**{**rec.__dict__, "params": params}))
    if last is not None:
        raise last
    raise PassSkippedError(Technique.LOWRANK, "no retained energy on the ladder kept the accuracy")


def _weight(node: object, inits: Mapping[str, object]) -> npt.NDArray[Any] | None:
    from onnx import NodeProto, TensorProto

    assert isinstance(node, NodeProto)
    if node.op_type not in ("Gemm", "MatMul") or len(node.input) < 2 or node.input[1] not in inits:
        return None
    if node.op_type == "Gemm" and graphs.attr(node, "transA", 0):
        return None
    tensor = inits[node.input[1]]
    assert isinstance(tensor, TensorProto)
    if tensor.data_type != TensorProto.FLOAT or len(tensor.dims) != 2:
        return None
    w = graphs.array(tensor)
    if node.op_type == "Gemm" and graphs.attr(node, "transB", 0):
        w = w.T
    return w
