"""The packed transfer format: round trip, size, corruption, and the decoder's independence."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from edgefleet.common import packing
from edgefleet.controller.compress import clustering, graphs, pruning


@pytest.fixture(scope="module")
def clustered(cnn) -> bytes:
    return clustering.cluster_weights(
        pruning.prune_magnitude(cnn.onnx_bytes, sparsity=0.6).model
    ).model


def test_decode_of_encode_is_the_clustered_model(clustered, cnn_cal) -> None:
    packed = packing.encode(clustered)
    assert packing.is_packed(packed)
    decoded = packing.decode(packed)
    assert decoded == clustered
    want = graphs.run(clustered, cnn_cal[:1])[0]
    got = graphs.run(decoded, cnn_cal[:1])[0]
    for a, b in zip(want, got, strict=True):
        np.testing.assert_array_equal(a, b)
    assert len(packed) * 10 < len(clustered)


def test_unclustered_models_round_trip_too(digits_model) -> None:
    packed = packing.encode(digits_model.onnx_bytes)
    assert packing.decode(packed) == digits_model.onnx_bytes


def test_corrupted_containers_are_refused(clustered) -> None:
    packed = bytearray(packing.encode(clustered))
    with pytest.raises(packing.PackingError, match="magic"):
        packing.decode(b"not a container")
    packed[-5] ^= 0xFF
    with pytest.raises(packing.PackingError):
        packing.decode(bytes(packed))


def test_huffman_codes_skewed_streams_within_the_length_limit() -> None:
    counts = np.array([2**40] + [1] * 40, dtype=np.int64)
    lengths = packing._code_lengths(counts)
    assert lengths.max() <= packing.MAX_CODE_LENGTH
    indices = np.repeat(np.arange(41), [1000] + [1] * 40)
    stream, bits = packing._huffman_encode(indices, lengths)
    decoded = packing._huffman_decode(
        np.frombuffer(stream, np.uint8), bits, lengths.astype(np.uint8), len(indices)
    )
    np.testing.assert_array_equal(decoded, indices)


def test_the_decoder_module_imports_nothing_from_edgefleet() -> None:
    source = Path(packing.__file__).read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add("." if node.level else (node.module or "").split(".")[0])
    assert imported <= {
        "__future__",
        "hashlib",
        "heapq",
        "itertools",
        "json",
        "lzma",
        "struct",
        "typing",
        "numpy",
        "onnx",
    }
