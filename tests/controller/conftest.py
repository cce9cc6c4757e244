"""Fixtures for the controller tests: a controller on the session broker, a paho device."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Broker
from tests.controller import databases, support


@pytest.fixture(scope="session", autouse=True)
def _test_databases() -> Iterator[None]:
    """Drop the PostgreSQL databases the session made (``EDGEFLEET_TEST_DB``)."""
    yield
    databases.drop_all()


@pytest.fixture
def ctl(tmp_path: Path, broker: Broker) -> Iterator[support.Running]:
    running = support.start(support.settings(tmp_path / "data", broker.url))
    yield running
    running.stop()


@pytest.fixture
def device(broker: Broker) -> Iterator[support.Device]:
    dev = support.Device(broker.url)
    yield dev
    dev.close()


@pytest.fixture
def agents(broker: Broker) -> Iterator[support.Agents]:
    made = support.Agents(broker.url)
    yield made
    made.close()
