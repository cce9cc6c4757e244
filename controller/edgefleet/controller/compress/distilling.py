"""Knowledge distillation: train a smaller student to match a teacher ONNX model's outputs.

Unlabelled inputs only: the teacher labels them (soft targets at temperature ``T``), plus noisy
and mixed-up copies so the student sees more of the input space than the transfer set. The
student is trained with PyTorch on the CPU and written to ONNX by hand with ``onnx.helper``
(no exporter needed), with the teacher's input and output names. Students: an MLP for [N, F]
inputs, a two-layer CNN (second conv strided) for [N, C, H, W]. Teachers whose outputs are not
class scores [N, K] (plus, optionally, their argmax as a label) are skipped, as is everything
when PyTorch is not installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import helper, numpy_helper

from . import graphs
from .errors import PassSkippedError
from .graphs import Feed
from .records import Compressed, LayerChange, PassRecord, Technique

F32 = npt.NDArray[np.float32]


def distill(
    teacher: bytes,
    transfer: Sequence[Feed],
    *,
    width: float = 0.5,
    epochs: int = 40,
    temperature: float = 2.0,
    seed: int = 0,
) -> Compressed:
    try:
        import torch
    except ImportError as exc:
        raise PassSkippedError(
            Technique.DISTILL, "PyTorch is not installed (pip install torch); it trains the student"
        ) from exc
    proto = graphs.load(teacher)
    inputs = graphs.graph_inputs(proto)
    if len(inputs) != 1 or not transfer:
        raise PassSkippedError(Technique.DISTILL, "needs one model input and transfer data")
    in_name = inputs[0].name
    x = np.concatenate([np.asarray(f[in_name]) for f in transfer]).astype(np.float32)
    if x.ndim not in (2, 4):
        raise PassSkippedError(Technique.DISTILL, f"no student for inputs of shape {list(x.shape)}")
    rng = np.random.default_rng(seed)
    x_all = _augment(x, rng)
    outs = graphs.run(teacher, [{in_name: x_all[i : i + 512]} for i in range(0, len(x_all), 512)])
    names = [o.name for o in proto.graph.output]
    outputs = [np.concatenate([o[i] for o in outs]) for i in range(len(names))]
    primary, kinds = _output_roles(outputs, names)
    scores = outputs[primary].astype(np.float64)
    is_prob = bool(np.all(scores >= 0) and np.allclose(scores.sum(axis=1), 1, atol=1e-3))
    logits = np.log(np.clip(scores, 1e-8, None)) if is_prob else scores
    soft = np.exp((logits - logits.max(1, keepdims=True)) / temperature)
    soft /= soft.sum(1, keepdims=True)
    torch.manual_seed(seed)
    n_classes = scores.shape[1]
    net, layers = _student(torch, x.shape[1:], n_classes, width, _param_count(proto))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    xt, st = torch.from_numpy(x_all), torch.from_numpy(soft.astype(np.float32))
    for _ in range(epochs):
        order = torch.from_numpy(rng.permutation(len(xt)))
        for i in range(0, len(xt), 64):
            idx = order[i : i + 64]
            log_q = torch.log_softmax(net(xt[idx]) / temperature, dim=1)
            loss = torch.nn.functional.kl_div(log_q, st[idx], reduction="batchmean")
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
    with torch.no_grad():
        agree = float((net(xt).argmax(1).numpy() == scores.argmax(1)).mean())
    weights = {k: v.detach().numpy().astype(np.float32) for k, v in net.state_dict().items()}
    data = _to_onnx(
        weights,
        layers,
        teacher=proto,
        in_name=in_name,
        names=names,
        primary=primary,
        kinds=kinds,
        is_prob=is_prob,
    )
    graphs.check_runs(data, Technique.DISTILL, [{in_name: x[:2]}])
    student_params = sum(int(v.size) for v in weights.values())
    return Compressed(
        data,
        PassRecord(
            Technique.DISTILL,
            {
                "width": width,
                "epochs": epochs,
                "temperature": temperature,
                "student": "cnn" if x.ndim == 4 else "mlp",
            },
            f"torch {torch.__version__} (CPU) + onnx.helper",
            len(teacher),
            len(data),
            (LayerChange("model", f"{_param_count(proto)} params", f"{student_params} params"),),
            (f"student trained on {len(x_all)} unlabelled inputs ({len(x)} + augmented copies)",),
            {"train_agreement": agree},
        ),
    )


def _augment(x: F32, rng: np.random.Generator) -> F32:
    scale = float(x.std()) or 1.0
    noisy = x + rng.normal(0, 0.05 * scale, x.shape).astype(np.float32)
    lam = rng.uniform(0.6, 1.0, (len(x),) + (1,) * (x.ndim - 1)).astype(np.float32)
    mixed = lam * x + (1 - lam) * x[rng.permutation(len(x))]
    return np.concatenate([x, noisy, mixed]).astype(np.float32)


def _output_roles(outputs: list[Any], names: list[str]) -> tuple[int, list[str]]:
    scores = [
        i for i, o in enumerate(outputs) if o.ndim == 2 and o.shape[1] > 1 and o.dtype.kind == "f"
    ]
    if len(scores) != 1:
        raise PassSkippedError(Technique.DISTILL, "teacher has no single class-score output [N, K]")
    primary = scores[0]
    argmax = outputs[primary].argmax(axis=1)
    kinds = []
    for i, out in enumerate(outputs):
        if i == primary:
            kinds.append("scores")
        elif out.ndim == 1 and out.dtype.kind in "iu" and (out == argmax).mean() > 0.99:
            kinds.append("label")
        else:
            raise PassSkippedError(Technique.DISTILL, f"teacher output {names[i]!r} is no label")
    return primary, kinds


def _param_count(model: onnx.ModelProto) -> int:
    return int(sum(np.prod(t.dims) for t in model.graph.initializer))


def _student(
    torch: Any, shape: tuple[int, ...], k: int, width: float, teacher_params: int
) -> tuple[Any, list[tuple[str, str]]]:
    nn = torch.nn
    if len(shape) == 1:
        hidden = max(8, int(width * teacher_params / (shape[0] + k)))
        hidden = min(hidden, 256)
        net = nn.Sequential(nn.Linear(shape[0], hidden), nn.ReLU(), nn.Linear(hidden, k))
        return net, [("0", "gemm"), ("1", "relu"), ("2", "gemm")]
    c, h, w = shape
    ch = max(4, int(16 * width))
    flat = 2 * ch * ((h + 1) // 2) * ((w + 1) // 2)
    net = nn.Sequential(
        nn.Conv2d(c, ch, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(ch, 2 * ch, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(flat, k),
    )
    layers = [
        ("0", "conv"),
        ("1", "relu"),
        ("2", "conv2"),
        ("3", "relu"),
        ("4", "flatten"),
        ("5", "gemm"),
    ]
    return net, layers


def _to_onnx(
    p: dict[str, F32],
    layers: list[tuple[str, str]],
    *,
    teacher: onnx.ModelProto,
    in_name: str,
    names: list[str],
    primary: int,
    kinds: list[str],
    is_prob: bool,
) -> bytes:
    nodes, inits, current = [], [], in_name
    for key, kind in layers:
        out = f"student.{key}"
        if kind in ("conv", "conv2"):
            attrs: dict[str, Any] = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
            if kind == "conv2":
                attrs["strides"] = [2, 2]
            nodes.append(
                helper.make_node(
                    "Conv",
                    [current, f"{key}.weight", f"{key}.bias"],
                    [out],
                    f"student_conv{key}",
                    **attrs,
                )
            )
        elif kind == "gemm":
            nodes.append(
                helper.make_node(
                    "Gemm",
                    [current, f"{key}.weight", f"{key}.bias"],
                    [out],
                    f"student_fc{key}",
                    transB=1,
                )
            )
        elif kind == "relu":
            nodes.append(helper.make_node("Relu", [current], [out], f"student_relu{key}"))
        else:
            nodes.append(
                helper.make_node("Flatten", [current], [out], f"student_flatten{key}", axis=1)
            )
        if kind not in ("relu", "flatten"):
            inits += [
                numpy_helper.from_array(p[f"{key}.weight"], f"{key}.weight"),
                numpy_helper.from_array(p[f"{key}.bias"], f"{key}.bias"),
            ]
        current = out
    scores = names[primary]
    if is_prob:
        nodes.append(helper.make_node("Softmax", [current], [scores], "student_softmax", axis=1))
    else:
        nodes.append(helper.make_node("Identity", [current], [scores], "student_scores"))
    for name, kind in zip(names, kinds, strict=True):
        if kind == "label":
            nodes.append(
                helper.make_node("ArgMax", [current], [name], f"student_{name}", axis=1, keepdims=0)
            )
    graph = helper.make_graph(
        nodes,
        f"{teacher.graph.name}-student",
        [graphs.graph_inputs(teacher)[0]],
        list(teacher.graph.output),
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgefleet-distill"
    )
    model.ir_version = 8
    return model.SerializeToString()
