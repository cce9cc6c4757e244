"""Refusing ONNX models that keep tensors in external files.

An ONNX tensor may say ``data_location: EXTERNAL`` and name a file (``location``), an offset
and a length; ONNX Runtime then reads those bytes from disk, relative to the model's directory,
or to the working directory when the model is loaded from bytes. A user's model that names
``edgefleet-data/keys/<id>.pem`` would read the controller's signing key into a weight and hand
it back as an output. EdgeFleet ships every model as one self-contained blob, so such a model
is refused wherever it enters: at registration on the controller, and by the agent before ONNX
Runtime loads it.

Pure (a parsed ``ModelProto`` in, a refusal or nothing out); shared by the controller and the
agent. The walk covers every place a tensor can hide: initializers (dense and sparse) of the
main graph, of every subgraph (``If``, ``Loop``, ``Scan`` bodies, at any depth) and tensor
attributes of nodes there and in model-local functions.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from edgefleet.common.errors import InvalidInputError

EMBED_HINT = "embed it (onnx.save with save_as_external_data=False)"


def external_tensors(model: onnx.ModelProto) -> Iterator[tuple[str, str]]:
    """(tensor name, file it names) for every tensor kept outside the model's bytes."""
    yield from _graph(model.graph)
    for function in model.functions:
        for node in function.node:
            yield from _node(node)


def check_embedded(model: onnx.ModelProto) -> None:
    """Raise ``InvalidInputError`` naming the first tensor that keeps its data in a file."""
    for name, location in external_tensors(model):
        raise InvalidInputError(
            f"model keeps tensor {name!r} in external file {location!r}; {EMBED_HINT}"
        )


def refuse_external(source: bytes | Path) -> None:
    """``check_embedded`` on a serialized model (bytes, or a file), for a caller about to hand
    it to ONNX Runtime. Bytes that do not parse as ONNX pass: ONNX Runtime refuses them next,
    in its own words."""
    try:
        if isinstance(source, Path):
            model = onnx.load(str(source), load_external_data=False)
        else:
            model = onnx.load_model_from_string(source)
    except (DecodeError, OSError, ValueError, RuntimeError):
        return
    check_embedded(model)


def _graph(graph: onnx.GraphProto) -> Iterator[tuple[str, str]]:
    for tensor in graph.initializer:
        yield from _tensor(tensor)
    for sparse in graph.sparse_initializer:
        yield from _sparse(sparse)
    for node in graph.node:
        yield from _node(node)


def _node(node: onnx.NodeProto) -> Iterator[tuple[str, str]]:
    for attr in node.attribute:
        if attr.HasField("t"):
            yield from _tensor(attr.t)
        for tensor in attr.tensors:
            yield from _tensor(tensor)
        if attr.HasField("sparse_tensor"):
            yield from _sparse(attr.sparse_tensor)
        for sparse in attr.sparse_tensors:
            yield from _sparse(sparse)
        if attr.HasField("g"):
            yield from _graph(attr.g)
        for graph in attr.graphs:
            yield from _graph(graph)


def _sparse(sparse: onnx.SparseTensorProto) -> Iterator[tuple[str, str]]:
    yield from _tensor(sparse.values)
    yield from _tensor(sparse.indices)


def _tensor(tensor: onnx.TensorProto) -> Iterator[tuple[str, str]]:
    # ONNX Runtime goes by data_location; a tensor that carries external_data entries without
    # it is refused too, since it says the same thing and some tool may read it that way.
    if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        yield tensor.name or "(unnamed)", location
