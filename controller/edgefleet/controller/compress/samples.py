"""A small real CNN for the compression passes: trained on scikit-learn's digits with numpy.

Tests and ``bench/compression.py`` share it. No deep-learning framework is needed: a
Conv-Relu-Conv-Relu-Flatten-Gemm-Relu-Gemm network is trained with plain numpy (im2col
convolutions, hand-written backward pass, Adam) and exported to ONNX with ``onnx.helper``,
like ``edgefleet.demo.digits`` does for its MLP. Input ``pixels`` float32[N, 1, 8, 8]
(values 0..1), outputs ``probabilities`` float32[N, 10] and ``label`` int64[N].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgefleet.demo.digits import DigitsData

OPSET = 17
F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class TrainedCnn:
    onnx_bytes: bytes
    accuracy: float  # on the held-out test split, measured with the numpy forward pass
    channels: tuple[int, int]
    hidden: int


def images(x: npt.NDArray[np.float32]) -> F32:
    """Flat digits rows (N, 64) as the CNN's NCHW input (N, 1, 8, 8)."""
    out: F32 = np.ascontiguousarray(x.reshape(-1, 1, 8, 8), dtype=np.float32)
    return out


def _cols(x: F32) -> F32:
    """im2col of a 3x3, pad-1 convolution on 8x8 maps: (N, C, 8, 8) -> (N*64, C*9)."""
    n, c = x.shape[:2]
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    win = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))
    return np.ascontiguousarray(win.transpose(0, 2, 3, 1, 4, 5)).reshape(n * 64, c * 9)


def _uncols(d_cols: F32, n: int, c: int) -> F32:
    """The adjoint of ``_cols``: scatter column gradients back onto the input maps."""
    d = d_cols.reshape(n, 8, 8, c, 3, 3)
    d_padded = np.zeros((n, c, 10, 10), dtype=np.float32)
    for ki in range(3):
        for kj in range(3):
            d_padded[:, :, ki : ki + 8, kj : kj + 8] += d[..., ki, kj].transpose(0, 3, 1, 2)
    return d_padded[:, :, 1:-1, 1:-1]


class _Net:
    def __init__(self, rng: np.random.Generator, c1: int, c2: int, hidden: int) -> None:
        def he(*shape: int, fan_in: int) -> F32:
            out: F32 = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
            return out

        self.p: dict[str, F32] = {
            "conv1.w": he(c1, 1, 3, 3, fan_in=9),
            "conv1.b": np.zeros(c1, np.float32),
            "conv2.w": he(c2, c1, 3, 3, fan_in=c1 * 9),
            "conv2.b": np.zeros(c2, np.float32),
            "fc1.w": he(c2 * 64, hidden, fan_in=c2 * 64),
            "fc1.b": np.zeros(hidden, np.float32),
            "fc2.w": he(hidden, 10, fan_in=hidden),
            "fc2.b": np.zeros(10, np.float32),
        }

    def _conv(self, x: F32, name: str) -> tuple[F32, F32]:
        w = self.p[f"{name}.w"]
        cols = _cols(x)
        out = cols @ w.reshape(w.shape[0], -1).T + self.p[f"{name}.b"]
        return out.reshape(x.shape[0], 8, 8, w.shape[0]).transpose(0, 3, 1, 2), cols

    def forward(self, x: F32) -> tuple[F32, dict[str, F32]]:
        z1, cols1 = self._conv(x, "conv1")
        a1 = np.maximum(z1, 0)
        z2, cols2 = self._conv(a1, "conv2")
        a2 = np.maximum(z2, 0).reshape(x.shape[0], -1)
        a3 = np.maximum(a2 @ self.p["fc1.w"] + self.p["fc1.b"], 0)
        logits = a3 @ self.p["fc2.w"] + self.p["fc2.b"]
        return logits, {"cols1": cols1, "a1": a1, "cols2": cols2, "z2": z2, "a2": a2, "a3": a3}

    def grads(self, x: F32, y: npt.NDArray[np.int64]) -> dict[str, F32]:
        logits, s = self.forward(x)
        n = x.shape[0]
        prob = np.exp(logits - logits.max(axis=1, keepdims=True))
        prob /= prob.sum(axis=1, keepdims=True)
        d_logits = prob
        d_logits[np.arange(n), y] -= 1.0
        d_logits /= n
        g = {"fc2.w": s["a3"].T @ d_logits, "fc2.b": d_logits.sum(0)}
        d_a3 = (d_logits @ self.p["fc2.w"].T) * (s["a3"] > 0)
        g["fc1.w"], g["fc1.b"] = s["a2"].T @ d_a3, d_a3.sum(0)
        d_z2 = (d_a3 @ self.p["fc1.w"].T).reshape(s["z2"].shape) * (s["z2"] > 0)
        d_z2f = d_z2.transpose(0, 2, 3, 1).reshape(n * 64, -1)
        w2 = self.p["conv2.w"]
        g["conv2.w"] = (d_z2f.T @ s["cols2"]).reshape(w2.shape)
        g["conv2.b"] = d_z2f.sum(0)
        d_a1 = _uncols(d_z2f @ w2.reshape(w2.shape[0], -1), n, w2.shape[1]) * (s["a1"] > 0)
        d_z1f = d_a1.transpose(0, 2, 3, 1).reshape(n * 64, -1)
        g["conv1.w"] = (d_z1f.T @ s["cols1"]).reshape(self.p["conv1.w"].shape)
        g["conv1.b"] = d_z1f.sum(0)
        return g


def train_cnn(
    data: DigitsData,
    *,
    channels: tuple[int, int] = (16, 32),
    hidden: int = 64,
    epochs: int = 15,
    seed: int = 0,
) -> TrainedCnn:
    """Train with Adam on minibatches of 32; deterministic for a given seed."""
    rng = np.random.default_rng(seed)
    net = _Net(rng, channels[0], channels[1], hidden)
    x, y = images(data.x_train), data.y_train
    m = {k: np.zeros_like(v) for k, v in net.p.items()}
    v = {k: np.zeros_like(v) for k, v in net.p.items()}
    step, lr, b1, b2 = 0, 2e-3, 0.9, 0.999
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), 32):
            idx = order[start : start + 32]
            step += 1
            for k, g in net.grads(x[idx], y[idx]).items():
                m[k] = b1 * m[k] + (1 - b1) * g
                v[k] = b2 * v[k] + (1 - b2) * g * g
                m_hat, v_hat = m[k] / (1 - b1**step), v[k] / (1 - b2**step)
                net.p[k] -= (lr * m_hat / (np.sqrt(v_hat) + 1e-8)).astype(np.float32)
    logits, _ = net.forward(images(data.x_test))
    accuracy = float((logits.argmax(axis=1) == data.y_test).mean())
    name = f"digits-cnn{channels[0]}x{channels[1]}"
    return TrainedCnn(to_onnx(net.p, name=name), accuracy, channels, hidden)


def to_onnx(p: dict[str, F32], *, name: str) -> bytes:
    """The trained parameters as a Conv-Relu-Conv-Relu-Flatten-Gemm-Relu-Gemm ONNX graph."""
    conv: dict[str, Any] = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    graph = helper.make_graph(
        nodes=[
            helper.make_node("Conv", ["pixels", "conv1.w", "conv1.b"], ["z1"], "conv1", **conv),
            helper.make_node("Relu", ["z1"], ["a1"], "relu1"),
            helper.make_node("Conv", ["a1", "conv2.w", "conv2.b"], ["z2"], "conv2", **conv),
            helper.make_node("Relu", ["z2"], ["a2"], "relu2"),
            helper.make_node("Flatten", ["a2"], ["flat"], "flatten", axis=1),
            helper.make_node("Gemm", ["flat", "fc1.w", "fc1.b"], ["z3"], "fc1"),
            helper.make_node("Relu", ["z3"], ["a3"], "relu3"),
            helper.make_node("Gemm", ["a3", "fc2.w", "fc2.b"], ["logits"], "fc2"),
            helper.make_node("Softmax", ["logits"], ["probabilities"], "softmax", axis=1),
            helper.make_node("ArgMax", ["logits"], ["label"], "argmax", axis=1, keepdims=0),
        ],
        name=name,
        inputs=[helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        outputs=[
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
        ],
        initializer=[numpy_helper.from_array(np.ascontiguousarray(a), k) for k, a in p.items()],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgefleet-demo"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()
