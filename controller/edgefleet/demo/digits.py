"""A small real model: an MLP trained on scikit-learn's digits, exported to ONNX by hand.

No converter package is needed: the trained weights go into a Gemm-Relu-Gemm-Softmax graph
built with ``onnx.helper``. Input ``pixels`` float32[N, 64] (values 0..1), outputs
``probabilities`` float32[N, 10] and ``label`` int64[N].
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


@dataclass(frozen=True)
class DigitsData:
    x_train: npt.NDArray[np.float32]
    y_train: npt.NDArray[np.int64]
    x_test: npt.NDArray[np.float32]
    y_test: npt.NDArray[np.int64]


@dataclass(frozen=True)
class TrainedModel:
    onnx_bytes: bytes
    accuracy: float  # on the held-out test split, measured with the sklearn model
    hidden: int


def load_data(*, seed: int = 0) -> DigitsData:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    return DigitsData(x_tr, y_tr, x_te, y_te)


def train(
    data: DigitsData, *, hidden: int = 32, seed: int = 0, max_iter: int = 300
) -> TrainedModel:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(hidden_layer_sizes=(hidden,), max_iter=max_iter, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(data.x_train, data.y_train)
    accuracy = float(clf.score(data.x_test, data.y_test))
    w1, w2 = (w.astype(np.float32) for w in clf.coefs_)
    b1, b2 = (b.astype(np.float32) for b in clf.intercepts_)
    return TrainedModel(to_onnx(w1, b1, w2, b2, name=f"digits-mlp{hidden}"), accuracy, hidden)


def to_onnx(
    w1: npt.NDArray[np.float32],
    b1: npt.NDArray[np.float32],
    w2: npt.NDArray[np.float32],
    b2: npt.NDArray[np.float32],
    *,
    name: str,
) -> bytes:
    n_in, n_out = w1.shape[0], w2.shape[1]
    graph = helper.make_graph(
        nodes=[
            helper.make_node("Gemm", ["pixels", "w1", "b1"], ["h_pre"]),
            helper.make_node("Relu", ["h_pre"], ["h"]),
            helper.make_node("Gemm", ["h", "w2", "b2"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
            helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
        ],
        name=name,
        inputs=[helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", n_in])],
        outputs=[
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", n_out]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
        ],
        initializer=[
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(b1, "b1"),
            numpy_helper.from_array(w2, "w2"),
            numpy_helper.from_array(b2, "b2"),
        ],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="edgefleet-demo",
        ir_version=8,
    )
    onnx.checker.check_model(model)
    return model.SerializeToString()
