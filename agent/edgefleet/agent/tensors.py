"""Tensors of a Predict request and reply: ``wire``'s conversions plus the request-level rule
that an input is named once."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet.common import wire
from edgefleet.common.errors import InvalidInputError
from edgefleet.v1 import common_pb2

Array = npt.NDArray[Any]
Buffer = bytes | bytearray | memoryview

decode = wire.array_from_pb


def decode_all(
    tensors: Iterable[common_pb2.Tensor], data: Sequence[Buffer] | None = None
) -> dict[str, Array]:
    """The inputs by name; ``data[i]``: the bytes of the i-th tensor where they are held apart
    from it (the fast local path's receive buffer), instead of its ``data`` field."""
    arrays: dict[str, Array] = {}
    for i, tensor in enumerate(tensors):
        if tensor.name in arrays:
            raise InvalidInputError(f"input {tensor.name!r} given more than once")
        arrays[tensor.name] = wire.array_from_pb(tensor, None if data is None else data[i])
    return arrays


def add_all(field: Any, arrays: Mapping[str, Array]) -> None:
    """Append each array to a repeated ``Tensor`` field (``reply.outputs``) in place."""
    for name, value in arrays.items():
        wire.add_array(field, name, np.asarray(value))
