"""Fixtures of the agent tests: a signer, an artifact server, in-process agents, watchers, and
a real agent process serving the digits model (``fast_agent``)."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edgefleet.agent import config, failpoints
from edgefleet.agent.daemon import Agent, Endpoints
from edgefleet.demo.digits import TrainedModel
from tests.agent.helpers import (
    AgentProcess,
    ArtifactServer,
    Signer,
    Watcher,
    serving_v1,
    unique_id,
)
from tests.conftest import Broker


@pytest.fixture
def signer(tmp_path: Path) -> Signer:
    return Signer(tmp_path)


@pytest.fixture
def artifacts(tmp_path: Path) -> Iterator[ArtifactServer]:
    server = ArtifactServer(tmp_path / "controller-blobs")
    yield server
    server.stop()


@dataclass
class RunningAgent:
    agent: Agent
    endpoints: Endpoints
    data_dir: Path
    device_id: str

    @property
    def endpoint(self) -> str:
        return self.endpoints.predict


StartAgent = Callable[..., RunningAgent]


@pytest.fixture
def start_agent(
    broker: Broker, tmp_path: Path, signer: Signer, artifacts: ArtifactServer
) -> Iterator[StartAgent]:
    """Start an in-process agent; every one started is stopped at the end of the test.
    ``timer`` and ``telemetry_clock`` go to ``Agent`` (``helpers.Ticks`` makes them exact)."""
    running: list[Agent] = []

    def start(
        *,
        device_id: str | None = None,
        data_dir: Path | None = None,
        timer: Callable[[], float] = time.perf_counter,
        telemetry_clock: Callable[[], float] = time.monotonic,
        **flags: Any,
    ) -> RunningAgent:
        device_id = device_id or unique_id()
        data_dir = data_dir or tmp_path / device_id
        values: dict[str, Any] = {
            "device_id": device_id,
            "fleet": "lab",
            "mqtt": broker.url,
            "controller": artifacts.address,
            "data_dir": data_dir,
            "predict_listen": "127.0.0.1:0",
            "metrics_port": 0,
            "trusted_keys": (signer.key_file,),
            "labels": {"site": "test"},
            "telemetry_interval": 0.3,
        }
        values.update(flags)
        agent = Agent(config.merge(values), timer=timer, telemetry_clock=telemetry_clock)
        running.append(agent)
        endpoints = agent.start()
        return RunningAgent(agent, endpoints, data_dir, device_id)

    yield start
    for agent in reversed(running):
        agent.stop()
    failpoints.configure("")


@pytest.fixture
def watch(broker: Broker) -> Iterator[Callable[[str], Watcher]]:
    watchers: list[Watcher] = []

    def make(device_id: str) -> Watcher:
        w = Watcher(broker.url, device_id=device_id)
        watchers.append(w)
        return w

    yield make
    for w in watchers:
        w.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A data dir's parent short enough for a Unix socket path (pytest's are long)."""
    path = Path(tempfile.mkdtemp(prefix="ef-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


# spawn(device_id=None, *, broker=None): an agent process, not started yet
Spawn = Callable[..., AgentProcess]


@pytest.fixture
def spawn(
    tmp_path: Path, signer: Signer, artifacts: ArtifactServer, broker: Broker
) -> Iterator[Spawn]:
    """Make ``AgentProcess``es (not started) for ``device_id`` (a new one if not given) on
    ``broker`` (the session's if not given); every one made is killed at the end."""
    procs: list[AgentProcess] = []

    def make(device_id: str | None = None, *, broker: Broker = broker) -> AgentProcess:
        device_id = device_id or unique_id()
        p = AgentProcess(
            device_id=device_id,
            data_dir=tmp_path / device_id,
            broker_url=broker.url,
            controller=artifacts.address,
            key_file=signer.key_file,
        )
        procs.append(p)
        return p

    yield make
    for p in procs:
        p.kill()


MAX_CONCURRENT = 2
"""``fast_agent``'s Predict limit: 2 + 4 fast-path connections at once."""


class FastAgent:
    """A real ``edge-agent run`` serving the digits model, and its Predict endpoints."""

    def __init__(self, proc: AgentProcess, info: dict[str, object]) -> None:
        self.proc = proc
        self.tcp = str(info["predict_endpoint"])
        self.unix = str(info["predict_socket"])
        self.fast = proc.data_dir / "predict.fast.sock"
        self.grpc_socket = proc.data_dir / "predict.sock"


def agent_process(
    short_dir: Path, broker: Broker, signer: Signer, artifacts: ArtifactServer, *extra: str
) -> AgentProcess:
    """A fresh device's ``edge-agent run`` (not started), Predict limited to ``MAX_CONCURRENT``."""
    device_id = unique_id()
    proc = AgentProcess(
        device_id=device_id,
        data_dir=short_dir / device_id,
        broker_url=broker.url,
        controller=artifacts.address,
        key_file=signer.key_file,
    )
    proc.args += ["--predict-max-concurrent", str(MAX_CONCURRENT), *extra]
    return proc


@pytest.fixture
def fast_agent(
    broker: Broker,
    short_dir: Path,
    signer: Signer,
    artifacts: ArtifactServer,
    digits_model: TrainedModel,
) -> Iterator[FastAgent]:
    proc = agent_process(short_dir, broker, signer, artifacts)
    with serving_v1(
        proc, signer, artifacts, digits_model.onnx_bytes, broker_url=broker.url
    ) as info:
        yield FastAgent(proc, info)
