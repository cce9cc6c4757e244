"""Golden inputs and outputs for a release's device health check.

A handful of eval samples on which the original and the compressed model agree with a clear
margin (so a correct install cannot flip them), spread over the predicted classes, with the
compressed model's outputs as computed here and a tolerance for the numeric outputs.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from . import graphs
from .evaluating import EvalSet


@dataclass(frozen=True)
class Golden:
    inputs: dict[str, npt.NDArray[Any]]
    outputs: dict[str, npt.NDArray[Any]]
    tolerance: float  # max abs difference allowed on float outputs; integer outputs must match

    def to_npz(self) -> bytes:
        """``input/<name>``, ``output/<name>`` and ``tolerance`` arrays, no pickles."""
        buf = io.BytesIO()
        arrays = {f"input/{k}": v for k, v in self.inputs.items()}
        arrays |= {f"output/{k}": v for k, v in self.outputs.items()}
        np.savez_compressed(buf, tolerance=np.float64(self.tolerance), **arrays)  # type: ignore[arg-type]
        return buf.getvalue()


def select_golden(
    original: bytes, compressed: bytes, eval_set: EvalSet, *, count: int = 8
) -> Golden:
    batch = {k: v for k, v in eval_set.batches[0].items()}
    if any(v.dtype == object for v in batch.values()):  # pragma: no cover - npz never has these
        raise ValueError("object arrays")
    ref_sess, new_sess = graphs.session(original), graphs.session(compressed)
    names = [o.name for o in new_sess.get_outputs()]
    ref = ref_sess.run(names, batch)
    new = new_sess.run(names, batch)
    scores_at = next(
        (i for i, o in enumerate(new) if o.ndim == 2 and o.shape[1] > 1 and o.dtype.kind == "f"),
        None,
    )
    n = len(next(iter(batch.values())))
    if scores_at is not None:
        top = np.sort(new[scores_at], axis=1)
        margin = top[:, -1] - top[:, -2]
        pred = new[scores_at].argmax(axis=1)
        ok = pred == ref[scores_at].argmax(axis=1)
        order = _spread(pred, np.where(ok, margin, -np.inf), count)
    else:
        diff = np.abs(new[0].reshape(n, -1) - ref[0].reshape(n, -1)).max(axis=1)
        order = np.argsort(diff, kind="stable")[:count]
    idx = np.sort(order)
    deviation = max(
        (
            float(np.abs(a[idx].astype(np.float64) - b[idx]).max())
            for a, b in zip(new, ref, strict=True)
            if a.dtype.kind == "f"
        ),
        default=0.0,
    )
    return Golden(
        {k: v[idx] for k, v in batch.items()},
        {k: v[idx] for k, v in zip(names, new, strict=True)},
        max(1e-4, 2 * deviation),
    )


def _spread(pred: npt.NDArray[Any], margin: npt.NDArray[Any], count: int) -> npt.NDArray[np.int64]:
    """Round-robin over predicted classes, most confident first within each class."""
    by_class = {
        c: list(np.flatnonzero(pred == c)[np.argsort(-margin[pred == c], kind="stable")])
        for c in np.unique(pred)
    }
    picked: list[int] = []
    while len(picked) < count and any(by_class.values()):
        for c in sorted(by_class):
            if by_class[c] and len(picked) < count:
                i = by_class[c].pop(0)
                if np.isfinite(margin[i]):
                    picked.append(int(i))
    return np.asarray(picked, dtype=np.int64)
