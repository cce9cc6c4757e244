"""Tensor <-> protobuf on the Predict hot path: ``wire``'s rules, a few microseconds cheaper.

``wire.array_from_pb`` / ``array_to_pb`` are the reference and stay the one place that decides
what is valid: anything unusual here (a dtype not seen yet, a byte count that does not add up,
big-endian or strided data) goes through them, so errors read the same. The fast path skips
what costs most per call in numpy: ``dtype.name`` (about 2 us) and ``np.prod`` (about 3 us).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet.common import wire
from edgefleet.common.errors import InvalidInputError
from edgefleet.v1 import common_pb2

Array = npt.NDArray[Any]

# Filled as dtypes are met; both maps are small (numeric dtypes only) and idempotent to fill.
_DTYPES: dict[str, np.dtype[Any]] = {}
_NAMES: dict[np.dtype[Any], str] = {}


def decode(msg: common_pb2.Tensor) -> Array:
    dtype = _DTYPES.get(msg.dtype)
    if dtype is None:
        array = wire.array_from_pb(msg)  # validates the dtype name (raises when bad)
        _DTYPES[msg.dtype] = array.dtype
        return array
    shape = tuple(msg.shape)
    count = 1
    for d in shape:
        if d < 0:
            return wire.array_from_pb(msg)  # raises, naming the tensor
        count *= d
    data = msg.data
    if count * dtype.itemsize != len(data):
        return wire.array_from_pb(msg)  # raises, naming the tensor
    return np.frombuffer(data, dtype).reshape(shape)


def decode_all(tensors: Iterable[common_pb2.Tensor]) -> dict[str, Array]:
    arrays: dict[str, Array] = {}
    for tensor in tensors:
        if tensor.name in arrays:
            raise InvalidInputError(f"input {tensor.name!r} given more than once")
        arrays[tensor.name] = decode(tensor)
    return arrays


def add_all(field: Any, arrays: Mapping[str, Array]) -> None:
    """Append each array to a repeated ``Tensor`` field (``reply.outputs``) without copies."""
    for name, value in arrays.items():
        a = np.asarray(value)
        dtype_name = _NAMES.get(a.dtype)
        if dtype_name is None or not a.flags.c_contiguous:
            field.append(wire.array_to_pb(name, a))
            if a.dtype.byteorder != ">":
                _NAMES[a.dtype] = a.dtype.name
            continue
        field.add(name=name, dtype=dtype_name, shape=a.shape, data=a.tobytes())
