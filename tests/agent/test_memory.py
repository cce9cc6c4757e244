"""The agent hands what a model load freed back to the kernel (glibc's malloc_trim)."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import pytest

from edgefleet.agent import memory
from edgefleet.demo.digits import DigitsData
from tests.agent.test_serving import runtime_for

GLIBC = platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is glibc's")
def test_release_free_heap_calls_glibcs_malloc_trim() -> None:
    assert memory._malloc_trim() is not None
    assert memory.release_free_heap() is True


def test_each_model_load_releases_the_free_heap(
    digits_model_path: Path, digits_data: DigitsData, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[bool] = []
    real = memory.release_free_heap

    def counted() -> bool:
        calls.append(real())
        return calls[-1]

    monkeypatch.setattr(memory, "release_free_heap", counted)
    runtime = runtime_for(digits_model_path)
    assert calls == [GLIBC]
    out = runtime.predict({"pixels": digits_data.x_test[:2].copy()})
    assert out["probabilities"].shape == (2, 10)
    np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1.0, rtol=1e-5)
