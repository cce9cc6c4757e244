"""Structured pruning: remove whole Conv output channels and Gemm/MatMul units, rewire the next
layers, so the model really does fewer multiply-adds (dense kernels speed up, unlike zeros).

A layer can lose channels when everything between it and its readers is channel-wise (Relu,
Clip, Sigmoid, BatchNormalization, ...) and every reader is a Conv (group 1), a Gemm/MatMul,
or a Flatten feeding one; a layer that feeds a graph output, a residual Add, a depthwise Conv
or anything else is left whole, and the record says why. Channels are ranked by the L1 norm of
their filters, or, with calibration data, by mean activation times the readers' weight norm.
With calibration data each reader is then refitted by ridge least squares to reproduce the
original model's output of that reader (channel pruning with reconstruction, He et al. 2017),
which recovers most of the accuracy without any training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx

from . import graphs
from .errors import InvalidInputError, PassSkippedError
from .graphs import Feed
from .records import Compressed, LayerChange, PassRecord, Technique

CHANNELWISE = {
    "Relu",
    "LeakyRelu",
    "Clip",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Tanh",
    "Elu",
    "Selu",
    "Softplus",
    "Identity",
    "BatchNormalization",
}
F = npt.NDArray[Any]


@dataclass(frozen=True)
class _Reader:
    node: onnx.NodeProto  # the Conv/Gemm/MatMul whose input channels go
    flatten: onnx.NodeProto | None  # a Flatten(axis=1) between, for Conv -> Flatten -> Gemm


@dataclass(frozen=True)
class _Plan:
    producer: onnx.NodeProto
    chain: tuple[onnx.NodeProto, ...]
    readers: tuple[_Reader, ...]


def prune_structured(
    model: bytes, *, amount: float, calibration: Sequence[Feed] = (), max_samples: int = 512
) -> Compressed:
    if not 0.0 < amount < 1.0:
        raise InvalidInputError(f"structured pruning amount must be in (0, 1), got {amount}")
    original = graphs.load(model)
    feeds = _limit(calibration, max_samples)
    proto = graphs.load(model)
    macs_before = count_macs(model, feeds[0] if feeds else None)
    changes: list[LayerChange] = []
    notes: list[str] = []
    for name in [n.name for n in proto.graph.node]:
        plan = _plan(proto, name)
        if isinstance(plan, str):
            if plan:
                notes.append(f"{name} kept whole: {plan}")
            continue
        try:
            change = _prune(proto, original, plan, amount, feeds)
        except _Unprunable as exc:
            notes.append(f"{name} kept whole: {exc}")
            continue
        changes.append(change)
    if not changes:
        raise PassSkippedError(
            Technique.PRUNE_STRUCTURED,
            "no prunable layer: "
            + ("; ".join(notes) or "no weights")
            + graphs.subgraph_note(proto),
        )
    data = graphs.dump(proto)
    graphs.check_runs(data, Technique.PRUNE_STRUCTURED, feeds[:1])
    macs_after = count_macs(data, feeds[0] if feeds else None)
    if feeds:
        notes.append("readers refitted by ridge least squares on the calibration data")
    return Compressed(
        data,
        PassRecord(
            Technique.PRUNE_STRUCTURED,
            {"amount": amount, "reconstruct": bool(feeds)},
            "numpy (channel removal + least squares)",
            len(model),
            len(data),
            tuple(changes),
            tuple(notes),
            {"macs_before": macs_before, "macs_after": macs_after},
        ),
    )


class _Unprunable(Exception):
    pass


def _plan(model: onnx.ModelProto, name: str) -> _Plan | str:
    """How to prune node ``name``, or why not ("" for nodes that are no weight layer)."""
    inits = graphs.initializers(model)
    node = next(n for n in model.graph.node if n.name == name)
    if node.op_type not in graphs.WEIGHT_OPS or len(node.input) < 2 or node.input[1] not in inits:
        return ""
    if node.op_type == "Conv" and graphs.attr(node, "group", 1) != 1:
        return "grouped/depthwise Conv"
    if node.op_type == "Gemm" and graphs.attr(node, "transA", 0):
        return "Gemm with transA"
    if len(node.input) > 2 and node.input[2] and node.input[2] not in inits:
        return "bias is not a constant"
    users = graphs.consumers(model)
    outputs = {o.name for o in model.graph.output}
    tensor, chain = node.output[0], []
    while True:
        if tensor in outputs:
            return "its channels are a model output"
        readers = users.get(tensor, [])
        head = readers[0] if len(readers) == 1 else None
        if head is not None and head.op_type in CHANNELWISE and head.input[0] == tensor:
            if any(i not in inits for i in head.input[1:] if i):
                return f"{head.op_type} {head.name} has non-constant parameters"
            chain.append(head)
            tensor = head.output[0]
            continue
        break
    if not readers:
        return "nothing reads it"
    plans = []
    for reader in readers:
        found = _reader(
            model, node, reader, tensor=tensor, users=users, inits=inits, outputs=outputs
        )
        if isinstance(found, str):
            return found
        plans.append(found)
    return _Plan(node, tuple(chain), tuple(plans))


def _reader(
    model: onnx.ModelProto,
    producer: onnx.NodeProto,
    reader: onnx.NodeProto,
    *,
    tensor: str,
    users: dict[str, list[onnx.NodeProto]],
    inits: dict[str, onnx.TensorProto],
    outputs: set[str],
) -> _Reader | str:
    conv = producer.op_type == "Conv"
    if reader.op_type == "Flatten" and conv and graphs.attr(reader, "axis", 1) == 1:
        nxt = users.get(reader.output[0], [])
        if len(nxt) == 1 and reader.output[0] not in outputs:
            found = _reader(
                model,
                producer,
                nxt[0],
                tensor=reader.output[0],
                users=users,
                inits=inits,
                outputs=outputs,
            )
            if isinstance(found, _Reader) and nxt[0].op_type != "Conv":
                return _Reader(found.node, reader)
        return f"Flatten {reader.name} is not read by one Gemm/MatMul"
    weight_ok = len(reader.input) > 1 and reader.input[1] in inits and reader.input[0] == tensor
    if reader.op_type == "Conv" and conv and weight_ok and graphs.attr(reader, "group", 1) == 1:
        return _Reader(reader, None)
    # A Conv's channels reach a Gemm/MatMul only through a Flatten (handled above).
    if (
        reader.op_type in ("Gemm", "MatMul")
        and weight_ok
        and not graphs.attr(reader, "transA", 0)
        and (not conv or _flattened(tensor, model))
    ):
        return _Reader(reader, None)
    return f"read by {reader.op_type} {reader.name}, which cannot be rewired"


def _flattened(tensor: str, model: onnx.ModelProto) -> bool:
    return any(n.op_type == "Flatten" and n.output[0] == tensor for n in model.graph.node)


def _out_axis(node: onnx.NodeProto) -> int:
    if node.op_type == "Conv" or (node.op_type == "Gemm" and graphs.attr(node, "transB", 0)):
        return 0
    return 1


def _in_axis(node: onnx.NodeProto) -> int:
    return 0 if _out_axis(node) == 1 else 1


def _prune(
    model: onnx.ModelProto,
    original: onnx.ModelProto,
    plan: _Plan,
    amount: float,
    feeds: list[Feed],
) -> LayerChange:
    inits = graphs.initializers(model)
    p = plan.producer
    w = graphs.array(inits[p.input[1]])
    axis = _out_axis(p)
    n_out = w.shape[axis]
    keep_n = max(1, round(n_out * (1 - amount)))
    if keep_n >= n_out:
        raise _Unprunable(f"{n_out} channels leave none to remove at {amount:.0%}")
    spatial = _spatial(model, plan, feeds) if any(r.flatten for r in plan.readers) else 1
    importance = _importance(model, plan, w=w, axis=axis, feeds=feeds)
    keep = np.sort(np.argsort(-importance, kind="stable")[:keep_n])
    graphs.replace(model, p.input[1], np.take(w, keep, axis=axis))
    if len(p.input) > 2 and p.input[2]:
        graphs.replace(model, p.input[2], graphs.array(inits[p.input[2]])[keep])
    for node in plan.chain:
        if node.op_type == "BatchNormalization":
            for name in node.input[1:5]:
                graphs.replace(model, name, graphs.array(inits[name])[keep])
    for reader in plan.readers:
        rw = graphs.array(graphs.initializers(model)[reader.node.input[1]])
        idx = (keep[:, None] * spatial + np.arange(spatial)).ravel() if reader.flatten else keep
        graphs.replace(model, reader.node.input[1], np.take(rw, idx, axis=_in_axis(reader.node)))
        if feeds:
            _refit(model, original, reader, feeds)
    return LayerChange(p.name, f"{n_out} channels", f"{keep_n} channels")


def _spatial(model: onnx.ModelProto, plan: _Plan, feeds: list[Feed]) -> int:
    tensor = plan.chain[-1].output[0] if plan.chain else plan.producer.output[0]
    if feeds:
        out = graphs.run(graphs.with_outputs(model, [tensor]), feeds[:1], outputs=[tensor])[0][0]
        return int(np.prod(out.shape[2:]))
    inferred = onnx.shape_inference.infer_shapes(model)
    for info in inferred.graph.value_info:
        if info.name == tensor:
            dims = info.type.tensor_type.shape.dim[2:]
            if dims and all(d.HasField("dim_value") for d in dims):
                return int(np.prod([d.dim_value for d in dims]))
    raise _Unprunable("spatial size before Flatten unknown (dynamic shape, no calibration data)")


def _importance(model: onnx.ModelProto, plan: _Plan, *, w: F, axis: int, feeds: list[Feed]) -> F:
    l1 = np.abs(np.moveaxis(w, axis, 0)).reshape(w.shape[axis], -1).sum(axis=1)
    if not feeds:
        return l1  # type: ignore[no-any-return]
    tensor = plan.chain[-1].output[0] if plan.chain else plan.producer.output[0]
    acts = graphs.run(graphs.with_outputs(model, [tensor]), feeds, outputs=[tensor])
    a = np.concatenate([np.abs(o[0]).reshape(o[0].shape[0], o[0].shape[1], -1) for o in acts])
    if a.ndim == 3 and axis == 1 and plan.producer.op_type != "Conv":
        a = np.abs(np.concatenate([o[0].reshape(-1, o[0].shape[-1]) for o in acts]))[:, :, None]
    mean_act = a.mean(axis=(0, 2))
    inits = graphs.initializers(model)
    reader_norm = np.zeros_like(mean_act)
    for reader in plan.readers:
        rw = np.moveaxis(graphs.array(inits[reader.node.input[1]]), _in_axis(reader.node), 0)
        rw = rw.reshape(len(mean_act), -1) if reader.flatten else rw.reshape(rw.shape[0], -1)
        reader_norm += np.linalg.norm(rw, axis=1)
    return mean_act * reader_norm  # type: ignore[no-any-return]


def _refit(
    model: onnx.ModelProto, original: onnx.ModelProto, reader: _Reader, feeds: list[Feed]
) -> None:
    """Ridge-refit the reader's weight and bias so its output matches the original model's."""
    node = reader.node
    if node.op_type == "Gemm" and (
        graphs.attr(node, "alpha", 1.0) != 1 or graphs.attr(node, "beta", 1.0) != 1
    ):
        return
    x_name, y_name = node.input[0], node.output[0]
    xs = graphs.run(graphs.with_outputs(model, [x_name]), feeds, outputs=[x_name])
    ys = graphs.run(graphs.with_outputs(original, [y_name]), feeds, outputs=[y_name])
    x = np.concatenate([o[0] for o in xs]).astype(np.float64)
    y = np.concatenate([o[0] for o in ys]).astype(np.float64)
    inits = graphs.initializers(model)
    w = graphs.array(inits[node.input[1]]).astype(np.float64)
    has_bias = len(node.input) > 2 and bool(node.input[2])
    if node.op_type == "Conv":
        cols = _im2col(x, node, w.shape)
        target = np.moveaxis(y, 1, -1).reshape(-1, w.shape[0])
        wm = w.reshape(w.shape[0], -1).T
    else:
        cols, target = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
        wm = w.T if node.op_type == "Gemm" and graphs.attr(node, "transB", 0) else w
    rng = np.random.default_rng(0)
    if len(cols) > 20000:
        rows = rng.choice(len(cols), 20000, replace=False)
        cols, target = cols[rows], target[rows]
    bias = graphs.array(inits[node.input[2]]).astype(np.float64) if has_bias else 0.0
    resid = target - cols @ wm - bias
    mean_x = cols.mean(axis=0)
    xc = cols - mean_x
    gram = xc.T @ xc
    lam = 1e-2 * float(np.trace(gram)) / max(len(gram), 1) + 1e-8
    delta = np.linalg.solve(gram + lam * np.eye(len(gram)), xc.T @ (resid - resid.mean(axis=0)))
    wm = wm + delta
    new_w = (
        wm.T.reshape(w.shape)
        if node.op_type == "Conv"
        else (wm.T if node.op_type == "Gemm" and graphs.attr(node, "transB", 0) else wm)
    )
    graphs.replace(model, node.input[1], new_w.astype(np.float32))
    if has_bias:
        db = resid.mean(axis=0) - mean_x @ delta
        graphs.replace(model, node.input[2], (bias + db).astype(np.float32))


def _im2col(x: F, node: onnx.NodeProto, wshape: tuple[int, ...]) -> F:
    if x.ndim != 4:
        raise _Unprunable("only 2-D convolutions are refitted")
    kh, kw = wshape[2], wshape[3]
    sh, sw = graphs.attr(node, "strides", [1, 1])
    dh, dw = graphs.attr(node, "dilations", [1, 1])
    pt, pl, pb, pr = graphs.attr(node, "pads", [0, 0, 0, 0])
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    ho = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    wo = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    cols = np.empty((x.shape[0], ho, wo, x.shape[1], kh, kw), x.dtype)
    for i in range(kh):
        for j in range(kw):
            patch = xp[
                :,
                :,
                i * dh : i * dh + sh * (ho - 1) + 1 : sh,
                j * dw : j * dw + sw * (wo - 1) + 1 : sw,
            ]
            cols[..., i, j] = patch.transpose(0, 2, 3, 1)
    return cols.reshape(x.shape[0] * ho * wo, -1)


def count_macs(model: bytes, feed: Feed | None) -> float:
    """Multiply-adds per sample of the Conv/Gemm/MatMul nodes, from shapes seen in one run."""
    proto = graphs.load(model)
    nodes = [n for n in proto.graph.node if n.op_type in graphs.WEIGHT_OPS]
    if not nodes:
        return 0.0
    if feed is None:
        feed = {
            v.name: np.zeros([d.dim_value or 1 for d in v.type.tensor_type.shape.dim], np.float32)
            for v in graphs.graph_inputs(proto)
        }
    names = [n.output[0] for n in nodes] + [n.input[0] for n in nodes]
    outs = graphs.run(graphs.with_outputs(proto, names), [feed], outputs=names)[0]
    shapes = dict(zip(names, (o.shape for o in outs), strict=True))
    inits = graphs.initializers(proto)
    batch = max(next(iter(feed.values())).shape[0], 1)
    total = 0.0
    for n in nodes:
        out = shapes[n.output[0]]
        if n.op_type == "Conv" and n.input[1] in inits:
            w = inits[n.input[1]].dims
            total += float(np.prod(out)) * float(np.prod(w[1:]))
        else:
            total += float(np.prod(out)) * float(shapes[n.input[0]][-1])
    return float(total / batch)


def _limit(feeds: Sequence[Feed], max_samples: int) -> list[Feed]:
    out: list[Feed] = []
    count = 0
    for feed in feeds:
        if count >= max_samples:
            break
        out.append(feed)
        count += len(next(iter(feed.values())))
    return out
