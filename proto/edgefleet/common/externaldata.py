"""Refusing ONNX models that keep tensors in external files.

An ONNX tensor may say ``data_location: EXTERNAL`` and name a file (``location``), an offset
and a length; ONNX Runtime then reads those bytes from disk, relative to the model's directory,
or to the working directory when the model is loaded from bytes. A user's model that names
``edgefleet-data/keys/<id>.pem`` would read the controller's signing key into a weight and hand
it back as an output. EdgeFleet ships every model as one self-contained blob, so such a model
is refused wherever it enters: at registration on the controller, and by the agent before ONNX
Runtime loads it.

Pure (a parsed ``ModelProto`` in, a refusal or nothing out); shared by the controller and the
agent. ``refuse_external`` walks the serialized model's protobuf wire format itself (the
field numbers of ``onnx.proto``), so the agent checks a model without the ``onnx`` package,
which a device does not install; ``external_tensors`` walks an ``onnx.ModelProto`` the
controller has parsed anyway. Both walks cover every place a tensor can hide: initializers
(dense and sparse) of the main graph, of every subgraph (``If``, ``Loop``, ``Scan`` bodies, at
any depth) and tensor attributes of nodes there and in model-local functions.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from edgefleet.common.errors import InvalidInputError

if TYPE_CHECKING:  # the controller's parsed models; the agent never imports onnx
    import onnx

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
        data = source.read_bytes() if isinstance(source, Path) else source
        found = next(_wire_message(memoryview(data), _MODEL), None)
    except (OSError, _WireError):
        return
    if found is not None:
        name, location = found
        raise InvalidInputError(
            f"model keeps tensor {name!r} in external file {location!r}; {EMBED_HINT}"
        )


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
    if tensor.data_location == _EXTERNAL or len(tensor.external_data):
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        yield tensor.name or "(unnamed)", location


# The wire walk: for each message the walk enters, field number -> the message it holds.
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
_MODEL, _GRAPH, _FUNCTION, _NODE, _ATTRIBUTE, _SPARSE, _TENSOR = range(7)
_FIELDS: dict[int, dict[int, int]] = {
    _MODEL: {7: _GRAPH, 25: _FUNCTION},  # graph, functions
    _FUNCTION: {7: _NODE},  # node
    _GRAPH: {1: _NODE, 5: _TENSOR, 15: _SPARSE},  # node, initializer, sparse_initializer
    _NODE: {5: _ATTRIBUTE},  # attribute
    # t, g, tensors, graphs, sparse_tensor, sparse_tensors
    _ATTRIBUTE: {5: _TENSOR, 6: _GRAPH, 10: _TENSOR, 11: _GRAPH, 22: _SPARSE, 23: _SPARSE},
    _SPARSE: {1: _TENSOR, 2: _TENSOR},  # values, indices
}
_MAX_DEPTH = 100  # protobuf's own recursion limit


class _WireError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _WireError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value: an int, or the bytes of a length-delimited field)."""
    pos, groups = 0, 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _WireError("field number 0")
        value: int | memoryview
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if pos + size > len(buf):
                raise _WireError("truncated fixed field")
            value, pos = 0, pos + size
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise _WireError("truncated length-delimited field")
            value, pos = buf[pos : pos + size], pos + size
        elif wire in (3, 4):  # groups (unknown to ONNX): skipped, but must balance
            groups += 1 if wire == 3 else -1
            if groups < 0:
                raise _WireError("unmatched end-group")
            continue
        else:
            raise _WireError(f"wire type {wire}")
        if not groups:
            yield number, wire, value
    if groups:
        raise _WireError("unterminated group")


def _wire_message(buf: memoryview, kind: int, depth: int = 0) -> Iterator[tuple[str, str]]:
    if depth > _MAX_DEPTH:
        raise _WireError("nested too deep")
    if kind == _TENSOR:
        yield from _wire_tensor(buf)
        return
    inner = _FIELDS[kind]
    for number, wire, value in _fields(buf):
        if wire == 2 and number in inner:
            assert isinstance(value, memoryview)
            yield from _wire_message(value, inner[number], depth + 1)


def _wire_tensor(buf: memoryview) -> Iterator[tuple[str, str]]:
    name, location, external = "", "", False
    for number, wire, value in _fields(buf):
        if number == 8 and wire == 2:  # name
            assert isinstance(value, memoryview)
            name = bytes(value).decode("utf-8", "replace")
        elif number == 14 and wire == 0:  # data_location
            external = external or value == _EXTERNAL
        elif number == 13 and wire == 2:  # external_data: StringStringEntryProto
            assert isinstance(value, memoryview)
            external = True
            entry = {n: v for n, w, v in _fields(value) if w == 2 and n in (1, 2)}
            key, text = entry.get(1), entry.get(2)
            if isinstance(key, memoryview) and bytes(key) == b"location":
                location = bytes(text).decode("utf-8", "replace") if text is not None else ""
    if external:
        yield name or "(unnamed)", location
