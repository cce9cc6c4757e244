"""Content-defined chunking of model blobs, so a release that changes one layer moves one layer.

A gear hash over a 32-byte window (``h = (h << 1) + GEAR[byte]``, 32 bits) decides the cut
points: a chunk ends after a byte whose hash has its top ``AVG_BITS`` bits zero, but no chunk is
shorter than ``MIN_CHUNK`` or longer than ``MAX_CHUNK`` (except the last, which may be short).
The cut depends only on the 32 bytes before it, so an edit moves the boundaries near it and no
others: the chunks of unchanged bytes keep their digests. ONNX's protobuf serialization writes
each initializer's bytes as they are, in order, so re-serializing a model with one tensor changed
leaves every other tensor's bytes (and so most chunks) identical.

The hash is vectorised with NumPy: ``h_i = sum_{j<32} GEAR[b_{i-j}] << j (mod 2**32)``, the same
value the byte-at-a-time recurrence gives once 32 bytes have passed.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from edgefleet.common import digests
from edgefleet.common import types as t

MIN_CHUNK = 16 * 1024
AVG_BITS = 16  # a cut on average every 64 KiB past the minimum
MAX_CHUNK = 256 * 1024
WINDOW = 32

_GEAR = (
    np.random.default_rng(0x6564676566).integers(0, 2**32, 256, dtype=np.uint64).astype(np.uint32)
)
_MASK = np.uint32(((1 << AVG_BITS) - 1) << (32 - AVG_BITS))


def _rolling(data: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint32]:
    """The gear hash after each byte of ``data``."""
    gear = _GEAR[data]
    h = gear.copy()
    for j in range(1, WINDOW):
        h[j:] += gear[:-j] << np.uint32(j)
    return h


def boundaries(data: bytes) -> list[int]:
    """The end offsets of ``data``'s chunks, in order (the last is ``len(data)``)."""
    if not data:
        return []
    arr = np.frombuffer(data, dtype=np.uint8)
    candidates = np.flatnonzero((_rolling(arr) & _MASK) == 0) + 1  # a cut after that byte
    ends: list[int] = []
    start = 0
    while start < len(data):
        i = int(np.searchsorted(candidates, start + MIN_CHUNK, side="left"))
        cut = int(candidates[i]) if i < len(candidates) else len(data)
        start = min(cut, start + MAX_CHUNK, len(data))
        ends.append(start)
    return ends


def split(data: bytes) -> list[tuple[t.Chunk, bytes]]:
    """``data`` as content-defined chunks: each chunk's digest and size, with its bytes."""
    out: list[tuple[t.Chunk, bytes]] = []
    start = 0
    for end in boundaries(data):
        piece = data[start:end]
        out.append((t.Chunk(digests.of_bytes(piece), len(piece)), piece))
        start = end
    return out


def offsets(chunks: tuple[t.Chunk, ...]) -> list[int]:
    """Where each of ``chunks`` starts in the blob they make up."""
    starts, at = [], 0
    for c in chunks:
        starts.append(at)
        at += c.size
    return starts
