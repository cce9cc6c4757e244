"""The packed transfer format: weights with few distinct values Huffman-coded, the rest LZMA'd.

Deep Compression's last stage. Shared contract code: the controller encodes, the agent decodes
(a manifest with ``model_encoding == "efpk"``). Self-contained on purpose: it imports only the
standard library and numpy (``encode`` also needs ``onnx``), never the controller or the agent,
which an import-linter contract checks. ``decode(encode(model)) == model`` byte for byte for
models whose tensors keep their values in ``raw_data`` (what ``onnx.numpy_helper`` and every
pass here write); other models come back with those tensors re-serialised in ``raw_data``.

Container (all integers little-endian)::

    b"EFPK" | u8 version=1 | u32 header length | header (JSON, UTF-8) | blobs

The header lists the decoded model's size and sha256, the skeleton (the model's bytes with
every coded tensor's raw bytes cut out, LZMA-compressed) and, per coded tensor, where its raw
bytes go back in (``offset`` into the decoded model), its numpy ``dtype``, value ``count``, the
``codebook`` (distinct values, in the tensor's dtype), canonical Huffman code ``lengths`` (one
byte per codebook entry) and the ``bits`` of the coded value stream. Blobs follow the header
in that order: skeleton, then per tensor codebook, lengths, stream (bits packed MSB first).

``decode`` trusts no number in the header: before anything is allocated it checks that the
decoded size is at most ``max_size`` (default ``MAX_DECODED_SIZE``, protobuf's 2 GiB limit for
a model without external data), that every blob lies inside the container, that each coded
tensor's values fit the decoded size and its stream holds at least one bit a value, and the
skeleton is decompressed no further than the bytes the decoded model leaves for it.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import lzma
import struct
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "ENCODING",
    "MAGIC",
    "MAX_CODE_LENGTH",
    "MAX_DECODED_SIZE",
    "MAX_SYMBOLS",
    "VERSION",
    "PackingError",
    "decode",
    "decoded_sha256",
    "encode",
    "is_packed",
]

ENCODING = "efpk"  # the manifest's ``model_encoding`` for a packed model blob
MAGIC = b"EFPK"
VERSION = 1
MAX_CODE_LENGTH = 16  # decode tables have 2**16 entries at most
MAX_SYMBOLS = 256  # tensors with more distinct values are left to LZMA
MAX_DECODED_SIZE = (2 << 30) - 1  # protobuf's limit: an ONNX model without external data


class PackingError(ValueError):
    """The container is malformed or its decoded bytes do not match the recorded sha256."""


def is_packed(data: bytes) -> bool:
    return data[:4] == MAGIC


def encode(model: bytes, *, min_values: int = 64) -> bytes:
    """Pack a model: tensors with at most 256 distinct values get per-tensor Huffman codes."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load_model_from_string(model)
    coded: list[tuple[npt.NDArray[Any], bytes]] = []
    for tensor in proto.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL or not _numeric(tensor):
            continue
        values = numpy_helper.to_array(tensor)
        if values.size < min_values or values.dtype.itemsize > 8 or values.dtype.kind not in "fiu":
            continue
        if len(np.unique(values)) > MAX_SYMBOLS:
            continue
        if not tensor.raw_data:  # values in typed fields: move them to raw_data to cut them out
            tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
        coded.append((values, bytes(tensor.raw_data)))
    data = proto.SerializeToString() if coded else model
    return _container(data, coded)


def decode(container: bytes, *, max_size: int = MAX_DECODED_SIZE) -> bytes:
    """The model bytes back from a container; raises ``PackingError`` on any inconsistency."""
    if not is_packed(container) or len(container) < 9:
        raise PackingError("not a packed model (no EFPK magic)")
    version, header_len = container[4], struct.unpack_from("<I", container, 5)[0]
    if version != VERSION:
        raise PackingError(f"unsupported packing version {version}")
    if header_len > len(container) - 9:
        raise PackingError(f"header of {header_len} bytes in a container of {len(container)}")
    try:
        header = json.loads(container[9 : 9 + header_len])
        size, entries = _checked_header(header, payload=len(container) - 9 - header_len)
        if size > max_size:
            raise PackingError(f"decoded size {size} is over the limit of {max_size} bytes")
        pos = 9 + header_len
        skeleton_len = header["skeleton"]
        coded = sum(count * np.dtype(entry["dtype"]).itemsize for entry, count, _ in entries)
        if coded > size:
            raise PackingError(f"coded tensors of {coded} bytes in a model of {size}")
        skeleton = _decompress(container[pos : pos + skeleton_len], size - coded)
        pos += skeleton_len
        pieces: list[bytes] = []
        cursor = 0
        for entry, count, n_bits in entries:
            dtype = np.dtype(entry["dtype"])
            n_sym = entry["symbols"]
            codebook = np.frombuffer(container, dtype, n_sym, pos)
            pos += n_sym * dtype.itemsize
            lengths = np.frombuffer(container, np.uint8, n_sym, pos)
            pos += n_sym
            n_bytes = (n_bits + 7) // 8
            stream = np.frombuffer(container, np.uint8, n_bytes, pos)
            pos += n_bytes
            gap = entry["offset"] - (sum(map(len, pieces)))
            if gap < 0 or cursor + gap > len(skeleton):
                raise PackingError(f"tensor offset {entry['offset']} is out of order or range")
            indices = _huffman_decode(stream, n_bits, lengths, count)
            pieces.append(skeleton[cursor : cursor + gap])
            cursor += gap
            pieces.append(codebook[indices].astype(dtype.newbyteorder("<")).tobytes())
        pieces.append(skeleton[cursor:])
    except (KeyError, TypeError, ValueError, IndexError, lzma.LZMAError) as exc:
        if isinstance(exc, PackingError):
            raise
        raise PackingError(f"malformed packed model: {exc}") from exc
    model = b"".join(pieces)
    if len(model) != header["size"] or hashlib.sha256(model).hexdigest() != header["sha256"]:
        raise PackingError("decoded model does not match its recorded size and sha256")
    return model


def _checked_header(header: Any, *, payload: int) -> tuple[int, list[tuple[Any, int, int]]]:
    """The decoded size and ``(entry, count, bits)`` per tensor, each checked for sense."""
    size, skeleton, tensors = header["size"], header["skeleton"], header["tensors"]
    if not all(isinstance(v, int) and v >= 0 for v in (size, skeleton)):
        raise PackingError("size and skeleton length must be non-negative integers")
    if not isinstance(tensors, list):
        raise PackingError("tensors must be a list")
    left = payload - skeleton
    if left < 0:
        raise PackingError(f"skeleton of {skeleton} bytes in a payload of {payload}")
    entries = []
    for entry in tensors:
        dtype = np.dtype(entry["dtype"])
        count, n_sym, n_bits = entry["count"], entry["symbols"], entry["bits"]
        if not all(isinstance(v, int) and v >= 0 for v in (count, n_sym, n_bits, entry["offset"])):
            raise PackingError("tensor count, symbols, bits and offset must be integers >= 0")
        if dtype.kind not in "fiub" or dtype.itemsize > 8 or not 0 < n_sym <= MAX_SYMBOLS:
            raise PackingError(f"tensor of dtype {dtype} with {n_sym} symbols")
        if count * dtype.itemsize > size or not count <= n_bits <= count * MAX_CODE_LENGTH:
            raise PackingError(f"{count} values in {n_bits} bits do not fit the model")
        left -= n_sym * (dtype.itemsize + 1) + (n_bits + 7) // 8
        if left < 0:
            raise PackingError("tensor data past the end of the container")
        entries.append((entry, count, n_bits))
    return size, entries


def _decompress(data: bytes, expected: int) -> bytes:
    """LZMA-decompress ``data`` to exactly ``expected`` bytes, never producing more."""
    decompressor = lzma.LZMADecompressor()
    out = decompressor.decompress(data, max_length=expected + 1)
    if len(out) != expected or not decompressor.eof:
        raise PackingError(f"the skeleton does not decompress to the {expected} bytes it must")
    return out


def decoded_sha256(container: bytes) -> str:
    """The sha256 (hex) the container records for its decoded model, without decoding it.

    A container whose own digest a signature vouches for vouches for this one too: checking a
    decoded model against it needs no second decode (the agent does so at start-up).
    """
    if not is_packed(container) or len(container) < 9:
        raise PackingError("not a packed model (no EFPK magic)")
    header_len = struct.unpack_from("<I", container, 5)[0]
    try:
        digest = json.loads(container[9 : 9 + header_len])["sha256"]
    except (KeyError, TypeError, ValueError) as exc:
        raise PackingError(f"malformed packed model: {exc}") from exc
    if not isinstance(digest, str):
        raise PackingError("malformed packed model: sha256 is not a string")
    return digest


def _numeric(tensor: Any) -> bool:
    return tensor.data_type not in (0, 8)  # UNDEFINED, STRING


def _container(model: bytes, coded: list[tuple[npt.NDArray[Any], bytes]]) -> bytes:
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    skeleton_parts: list[bytes] = []
    cursor = 0
    for values, raw in coded:
        offset = model.find(raw, cursor)
        if offset < 0:  # pragma: no cover - raw_data is always serialised contiguously
            continue
        skeleton_parts.append(model[cursor:offset])
        cursor = offset + len(raw)
        dtype = values.dtype.newbyteorder("<")
        codebook, indices = np.unique(values.ravel(), return_inverse=True)
        lengths = _code_lengths(np.bincount(indices, minlength=len(codebook)))
        stream, bits = _huffman_encode(indices, lengths)
        entries.append(
            {
                "offset": offset,
                "dtype": dtype.str,
                "count": int(values.size),
                "symbols": len(codebook),
                "bits": bits,
            }
        )
        blobs += [codebook.astype(dtype).tobytes(), lengths.astype(np.uint8).tobytes(), stream]
    skeleton_parts.append(model[cursor:])
    skeleton = lzma.compress(b"".join(skeleton_parts), preset=9 | lzma.PRESET_EXTREME)
    header = {
        "size": len(model),
        "sha256": hashlib.sha256(model).hexdigest(),
        "skeleton": len(skeleton),
        "tensors": entries,
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    return b"".join([MAGIC, bytes([VERSION]), struct.pack("<I", len(head)), head, skeleton, *blobs])


def _code_lengths(counts: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Huffman code lengths, capped at MAX_CODE_LENGTH by flattening the counts if needed."""
    counts = counts.astype(np.int64)
    while True:
        lengths = _huffman_lengths(counts)
        if lengths.max() <= MAX_CODE_LENGTH:
            return lengths
        counts = np.where(counts > 0, (counts >> 1) + 1, 0)


def _huffman_lengths(counts: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    lengths = np.zeros(len(counts), np.int64)
    used = [i for i, c in enumerate(counts) if c > 0]
    if len(used) == 1:
        lengths[used[0]] = 1
        return lengths
    tie = itertools.count()
    heap = [(int(counts[i]), next(tie), [i]) for i in used]
    heapq.heapify(heap)
    while len(heap) > 1:
        c1, _, s1 = heapq.heappop(heap)
        c2, _, s2 = heapq.heappop(heap)
        for s in s1 + s2:
            lengths[s] += 1
        heapq.heappush(heap, (c1 + c2, next(tie), s1 + s2))
    return lengths


def _canonical_codes(lengths: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
    """Canonical Huffman: symbols sorted by (length, symbol) get consecutive codes."""
    codes = np.zeros(len(lengths), np.int64)
    code, prev = 0, 0
    for sym in sorted(
        (s for s in range(len(lengths)) if lengths[s] > 0), key=lambda s: (lengths[s], s)
    ):
        code <<= int(lengths[sym]) - prev
        prev = int(lengths[sym])
        codes[sym] = code
        code += 1
    return codes


def _huffman_encode(indices: npt.NDArray[Any], lengths: npt.NDArray[Any]) -> tuple[bytes, int]:
    codes = _canonical_codes(lengths)
    sym_len = lengths[indices].astype(np.int64)
    sym_code = codes[indices]
    total = int(sym_len.sum())
    starts = np.cumsum(sym_len) - sym_len
    bits = np.zeros(total, np.uint8)
    for j in range(int(sym_len.max(initial=0))):
        has = sym_len > j
        bits[starts[has] + j] = (sym_code[has] >> (sym_len[has] - 1 - j)) & 1
    return np.packbits(bits).tobytes(), total


def _huffman_decode(
    stream: npt.NDArray[np.uint8], n_bits: int, lengths: npt.NDArray[np.uint8], count: int
) -> npt.NDArray[np.int64]:
    """Table decoding: a MAX-bit window at every bit position names the next symbol."""
    if count == 0:
        return np.zeros(0, np.int64)
    width = int(lengths.max())
    if width == 0 or width > MAX_CODE_LENGTH:
        raise PackingError(f"bad code lengths (max {width})")
    codes = _canonical_codes(lengths)
    table_sym = np.zeros(1 << width, np.int64)
    table_len = np.zeros(1 << width, np.int64)
    for sym in np.flatnonzero(lengths):
        shift = width - int(lengths[sym])
        table_sym[codes[sym] << shift : (codes[sym] + 1) << shift] = sym
        table_len[codes[sym] << shift : (codes[sym] + 1) << shift] = lengths[sym]
    bits = np.concatenate([np.unpackbits(stream)[:n_bits], np.zeros(width, np.uint8)])
    window = np.zeros(n_bits, np.int64)
    for j in range(width):
        window = (window << 1) | bits[j : j + n_bits]
    # next_pos[i]: where the symbol starting at bit i ends; following it is the only serial part.
    next_pos = [*(np.arange(n_bits) + table_len[window]).tolist(), n_bits]
    starts = [0] * count
    pos = 0
    for i in range(count):
        if pos >= n_bits:
            raise PackingError("coded stream ends before all values are decoded")
        starts[i] = pos
        pos = next_pos[pos]
    decoded: npt.NDArray[np.int64] = table_sym[window[np.asarray(starts)]]
    return decoded
