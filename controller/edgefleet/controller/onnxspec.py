"""Read what the registry records about an ONNX file: its tensor signature and opset.

Pure (bytes in, dataclass out). ``onnx.checker`` decides whether the bytes are a model at all;
a refusal becomes ``InvalidInputError("not an ONNX model: ...")``. A model that keeps a tensor
in an external file is refused first (``externaldata``). The registry runs ``inspect`` in a
sandbox process (``sandbox``), since parsing is the first thing a user's bytes meet.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from google.protobuf.message import DecodeError
from onnx import helper

from edgefleet.common.errors import InvalidInputError
from edgefleet.common.externaldata import check_embedded
from edgefleet.common.types import TensorSpec


@dataclass(frozen=True)
class OnnxInfo:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    opset: int  # of the default (ai.onnx) domain; 0 when the model declares none


def inspect(data: bytes) -> OnnxInfo:
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise InvalidInputError(f"not an ONNX model: {_first_line(exc)}") from exc
    check_embedded(model)
    try:
        onnx.checker.check_model(model)
    except (DecodeError, onnx.checker.ValidationError, ValueError, RuntimeError) as exc:
        raise InvalidInputError(f"not an ONNX model: {_first_line(exc)}") from exc
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    # Models from before IR 4 list their weights as inputs too; those are not fed by callers.
    inputs = tuple(_spec(v, where="input") for v in graph.input if v.name not in initializers)
    if not inputs:
        raise InvalidInputError("not an ONNX model: the graph has no inputs")
    outputs = tuple(_spec(v, where="output") for v in graph.output)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return OnnxInfo(inputs=inputs, outputs=outputs, opset=int(opset))


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _spec(value: onnx.ValueInfoProto, *, where: str) -> TensorSpec:
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        if where == "input":
            raise InvalidInputError(f"model input {value.name!r} is a {kind}, not a tensor")
        # Outputs such as a classifier's sequence-of-maps are recorded by kind, without shape.
        return TensorSpec(
            name=value.name, dtype=str(kind or "unknown").removesuffix("_type"), shape=()
        )
    tensor = value.type.tensor_type
    return TensorSpec(name=value.name, dtype=_dtype(tensor.elem_type), shape=_shape(tensor))


def _dtype(elem_type: int) -> str:
    try:
        return str(helper.tensor_dtype_to_np_dtype(elem_type).name)
    except (KeyError, ValueError, TypeError):
        return onnx.TensorProto.DataType.Name(elem_type).lower() if elem_type else "unknown"


def _shape(tensor: onnx.TypeProto.Tensor) -> tuple[int, ...]:
    if not tensor.HasField("shape"):
        return ()
    # A symbolic (``batch``) or missing dimension is dynamic: -1.
    return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
