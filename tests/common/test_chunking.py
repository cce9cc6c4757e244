"""The chunker's gear table is written out (no numpy.random at import) and must stay the one
its seed gives: a different table moves every cut point, so no held chunk would be reused."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from edgefleet.common import chunking


def test_gear_table_is_the_seeds() -> None:
    rng = np.random.default_rng(chunking.GEAR_SEED)
    expected = rng.integers(0, 2**32, 256, dtype=np.uint64).astype(np.uint32)
    assert chunking._GEAR.dtype == np.uint32
    np.testing.assert_array_equal(chunking._GEAR, expected)


def test_importing_the_chunker_does_not_load_numpy_random() -> None:
    code = "import sys, edgefleet.common.chunking; print('numpy.random' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "False"
