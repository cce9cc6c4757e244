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

# The gear table: ``np.random.default_rng(GEAR_SEED).integers(0, 2**32, 256, dtype=np.uint64)``
# as uint32, written out so that importing this module (the agent does, at start) does not load
# numpy.random (about 2.6 MB of a device's memory); tests/common/test_chunking.py checks the two
# agree. Changing a value changes every cut point, so every held chunk.
GEAR_SEED = 0x6564676566
# fmt: off
_GEAR = np.array([
    0x06109ecc, 0x34869fa9, 0x6a2309f7, 0x40a53814, 0x6b8799a7, 0x075cb3ea, 0xd7eb67e2, 0x8fa4acaf,
    0xe95d49b6, 0x0f77d119, 0xab3c1ae3, 0xc1f299c2, 0x36915b33, 0x9a2b3736, 0xa80895df, 0x2da62aef,
    0x00293e01, 0xccbb8bfe, 0x55f91ed2, 0x6e340466, 0x34a2b93b, 0xa53133ed, 0xbf656b7a, 0x1b28e69c,
    0xf73920a3, 0x38ed527b, 0xd3301021, 0x0a31de25, 0x0aceaa3b, 0x71f6d622, 0x02958ee6, 0x11d8c0dc,
    0xb0536520, 0x4db93b1b, 0xb3704404, 0x59c274de, 0x2abce4b4, 0x0808602e, 0xe1780d62, 0xbb43821e,
    0xf170da87, 0x9f1a9c6a, 0x06d2573e, 0x58ff7138, 0xdbe99b05, 0x1f49c188, 0x62d098d2, 0xc75f9ffc,
    0x42273cf8, 0xb145e62f, 0x3f0e3ac7, 0x60304821, 0x429d0f32, 0xdc02a208, 0x44db5219, 0x0d6e5c04,
    0x74b05c5f, 0x20b0ec11, 0xbdc757d7, 0xa0f0f2e8, 0x8b53be99, 0xd214fb1e, 0xfdcd86a9, 0x31253d96,
    0x7fdbf75c, 0x0dd044e0, 0xb5446c91, 0x7b2b8f0d, 0x80e427d7, 0x423420d2, 0x4dbfeed4, 0xd8d19d37,
    0xf30576ae, 0xd87d973d, 0x712378ec, 0xb713cbf7, 0xa9b17958, 0xa2669fa8, 0xff5cdeb2, 0xaced5d25,
    0xeaa5ce9e, 0x5623c6f9, 0x25fdb599, 0x994bf0ba, 0x729670d3, 0xf49b4bea, 0xa9eaf3cc, 0x5919c852,
    0x6731e426, 0xcd36501a, 0xa4980a36, 0x4256c544, 0x53693d0c, 0x2d82eb61, 0x4d17fe00, 0xa8803880,
    0xb9a2b6c9, 0xaf428b5d, 0x1e65b322, 0xbd39c50d, 0xaafbe607, 0x80476492, 0xa4d4c422, 0xc61c68a8,
    0xc7bb8d74, 0xa0a1a544, 0xff285317, 0x6a66248b, 0xcc3f580b, 0x3e13c028, 0x3db3a48e, 0x871101bb,
    0x54d5bd58, 0x3ca78fdf, 0xe6b5236a, 0xb86b9e9d, 0xea6f3d6a, 0x3d8f8b5d, 0x3e53e76d, 0xea3e8ed5,
    0x29a41541, 0xf6140555, 0xeb0f13bb, 0xddf6ba52, 0x536e444c, 0xfbe92e2c, 0x8bc9315a, 0x5ad79593,
    0xdb74a129, 0xbe127b84, 0x394948a4, 0x10d9aeb3, 0xd2eee2d6, 0x6c3116b1, 0xaf6ee397, 0x04303663,
    0x7dac1065, 0x310e5396, 0xb0992c71, 0x65b5b016, 0x3043df80, 0x11edb395, 0xa09ef4d4, 0x4709c1c8,
    0x09a65610, 0xe5aac9dd, 0xe37e996b, 0x1c0a7050, 0xba1203ee, 0x4ab01e61, 0x8bd16d7a, 0xb3ca64ff,
    0x40cd60c9, 0x7e2aceb3, 0x758c16bc, 0xf5d3487c, 0x80953369, 0x11897673, 0xff091472, 0x2ffd3b99,
    0x0ae9b99f, 0x2fedf5b8, 0xd61e9bff, 0x7ee27fc2, 0x04de119d, 0x4c499dbd, 0xa889c9c2, 0x6028b289,
    0x65bd8b95, 0x2279aae0, 0x11a0bf91, 0x05880a1a, 0x073cab12, 0x11e6f54e, 0x203499db, 0xfdb2eb90,
    0x8edf2a34, 0xe2b66785, 0xb81cc923, 0x0e7f8392, 0x7f7d5149, 0x5bce7b83, 0xfaba0e18, 0x94e102b7,
    0xa6127d54, 0xfe6df4c8, 0x0625ff6a, 0x96ecccdd, 0xeb6f9bd8, 0xdca04e74, 0xe42e9333, 0x4772a591,
    0x39ad486a, 0x216db6cf, 0x405219f6, 0xed5f91dd, 0xd207ef0c, 0xf906a8b2, 0x68019c5a, 0x757eece4,
    0xff0d1b63, 0x3137e415, 0x3fdb2025, 0x1b0239cb, 0x1e87d71a, 0xa878aea2, 0xad704a0d, 0xc3ff6c52,
    0x4076dc4d, 0xfc0dc60d, 0x82feec8d, 0x61f2f352, 0xddc58e9b, 0xb34840c5, 0xccb58569, 0x6ad489c2,
    0xf83f29eb, 0xab31813b, 0xea4f11c7, 0x22beffb4, 0x0ec16b0e, 0xdefe83f2, 0x5f0d63f1, 0x281ca001,
    0xa60e4638, 0xa9a174ba, 0x7376eabb, 0x8b253bf4, 0x1fbb387b, 0xf818d311, 0xd71c4e39, 0x883c0857,
    0x077e48ac, 0xe0234619, 0x1f4ca47a, 0x5704bb2e, 0x44925ba8, 0xe816a472, 0xb31042f8, 0x2c089663,
    0xb3237c89, 0xef798f4a, 0x31f053a1, 0x6352bd20, 0x42bdada9, 0x848704a7, 0xd1518e12, 0x5626059e,
    0x2ad55087, 0x81b49043, 0xf413b97b, 0xa53dd9fb, 0x4f37c4fe, 0xecd556dc, 0x7e97e314, 0xa3b24b82,
], dtype=np.uint32)
# fmt: on
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
