"""The compose stack for real: built here from local files, brought up, deployed to, torn down.

``deploy/docker/stack-images.sh`` builds every image compose starts (cached, so seconds when
nothing changed); the stack runs under a project of the test's own, on free host ports, next to
whatever else this dockerd runs. The host's edgectl registers a model, releases it and deploys
it to fleet factory-a through the controller's operator API; both simulated agents fetch it
from the controller over the compose network and serve it (Predict through their published
ports). Prometheus scrapes the controller and the registry answers the OCI distribution API.
``down -v`` removes the containers, the network and the volumes.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import grpc
import numpy as np
import pytest

from edgefleet.demo.digits import DigitsData, TrainedModel
from tests.agent.helpers import predict, wait_for
from tests.conftest import free_port
from tests.deploy.test_compose import COMPOSE, ROOT, compose_command

pytestmark = pytest.mark.slow

AGENTS = ("sim-a1", "sim-a2")
BUILD_TIMEOUT_S = 1800  # the first build downloads wheels and Debian packages; later: cached


class Stack:
    """One compose project: its command line and the host ports it was given."""

    def __init__(self, tmp_path: Path) -> None:
        self.project = f"edgefleet-test-{os.getpid()}"
        names = ("GRPC", "API", "REGISTRY", "PROMETHEUS")  # EDGEFLEET_<NAME>_PORT
        ports: set[int] = set()
        while len(ports) < len(names):  # four different ones (a port freed may come again)
            ports.add(free_port())
        self.ports = dict(zip(names, sorted(ports), strict=True))
        self.env = {**os.environ, **{f"EDGEFLEET_{k}_PORT": str(v) for k, v in self.ports.items()}}
        self.base = [*compose_command(), "-p", self.project, "-f", str(COMPOSE)]
        self.tmp = tmp_path

    def run(self, *args: str, timeout: float = 300) -> str:
        done = subprocess.run(
            [*self.base, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def port(self, service: str, port: int) -> str:
        """The host address compose published ``service``'s ``port`` on."""
        host_port = self.run("port", service, str(port)).strip().rpartition(":")[2]
        return f"127.0.0.1:{host_port}"

    def edgectl(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "edgefleet.edgectl", *args],
            env={
                **os.environ,
                "EDGECTL_CONTROLLER": f"127.0.0.1:{self.ports['API']}",
                "EDGECTL_TOKEN_FILE": str(self.tmp / "admin.token"),
                "EDGECTL_CONFIG": str(self.tmp / "edgectl.toml"),
            },
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, f"edgectl {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def logs(self) -> str:
        return subprocess.run(
            [*self.base, "logs", "--no-color", "--tail", "40"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        ).stdout


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    try:
        client = docker.from_env(timeout=30)
        client.ping()
        client.close()
    except docker.errors.DockerException as exc:
        pytest.skip(f"Docker is not available ({exc}); deploy/setup.sh --dev starts dockerd")
    s = Stack(tmp_path)
    built = subprocess.run(
        ["bash", str(ROOT / "deploy/docker/stack-images.sh"), sys.executable],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    try:
        s.run("up", "-d", "--no-build", timeout=600)
        yield s
    except BaseException:
        sys.stderr.write(s.logs())
        raise
    finally:
        s.run("down", "-v", "--remove-orphans", timeout=300)
    # nothing of the project is left: containers, its network, its volumes
    client = docker.from_env(timeout=30)
    try:
        label = {"label": f"com.docker.compose.project={s.project}"}
        assert client.containers.list(all=True, filters=label) == []
        assert client.networks.list(filters=label) == []
        assert client.volumes.list(filters=label) == []
    finally:
        client.close()


def _http(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return bytes(reply.read())
    except OSError:
        return None


def _serves(endpoint: str, x: np.ndarray, release: str) -> bool:
    try:
        return predict(endpoint, {"pixels": x}).release == release
    except grpc.RpcError:
        return False


def test_the_stack_comes_up_serves_a_release_and_goes(
    stack: Stack, tmp_path: Path, digits_model: TrainedModel, digits_data: DigitsData
) -> None:
    token = wait_for(
        "the controller's admin token",
        lambda: _token(stack),
        timeout=120,
        every=1.0,
    )
    (tmp_path / "admin.token").write_text(token)
    model = tmp_path / "digits.onnx"
    model.write_bytes(digits_model.onnx_bytes)
    wait_for(
        "both simulated agents registered",
        lambda: (
            len(json.loads(stack.edgectl("devices", "list", "--fleet", "factory-a", "--json")))
            == len(AGENTS)
        ),
        timeout=180,
        every=1.0,
    )
    stack.edgectl("model", "add", str(model), "--name", "digits")
    stack.edgectl("release", "create", "digits", "--version", "1.0.0")
    stack.edgectl("deploy", "digits:1.0.0", "--fleet", "factory-a")

    x = digits_data.x_test[:2]
    for agent in AGENTS:
        endpoint = stack.port(agent, 50061)
        wait_for(
            f"{agent} serving digits:1.0.0",
            functools.partial(_serves, endpoint, x, "digits:1.0.0"),
            timeout=180,
            every=0.5,
        )

    prometheus = f"http://127.0.0.1:{stack.ports['PROMETHEUS']}"
    query = prometheus + "/api/v1/query?query=up%7Bjob%3D%22edgefleet-controller%22%7D"

    def controller_up() -> bool:
        body = _http(query)
        result = json.loads(body)["data"]["result"] if body else []
        return bool(result) and result[0]["value"][1] == "1"

    wait_for("Prometheus scraping the controller", controller_up, timeout=120, every=1.0)
    assert _http(f"http://127.0.0.1:{stack.ports['REGISTRY']}/v2/") is not None


def _token(stack: Stack) -> str | None:
    done = subprocess.run(
        [*stack.base, "exec", "-T", "controller", "cat", "/var/lib/edgefleet/admin.token"],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else None
