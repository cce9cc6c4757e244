"""End-to-end fixtures: real ``edge-controller`` and ``edge-agent`` processes, ``edgectl`` as a CLI.

Processes start through ``edgefleet.demo.stack`` as ``edgectl demo`` starts them: every hop
mTLS on certificates made for the run (``tests.mtlsfleet``: an mTLS Mosquitto of the fleet's
own, the controller with ``--tls``, each agent enrolled, none ``--insecure``); every operation
on the fleet goes through the ``edgectl`` command line in a subprocess, on the operator API's
TLS.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edgefleet.demo.errors import StartError
from edgefleet.demo.processes import Processes, child_env, script
from edgefleet.demo.stack import Agent, AgentSpec, Controller
from tests.mtlsfleet import MtlsStack, start_enrolled, start_mtls

EDGECTL = script("edgectl", "edgefleet.edgectl.app")


@dataclass
class Cli:
    controller: str  # the operator API
    token_file: Path  # the admin token, given as EDGECTL_TOKEN_FILE (never in argv)
    ca_file: Path | None = None  # a --tls controller's api-ca.pem, given as EDGECTL_CA_FILE

    def run(self, *args: str | Path, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        argv = [*EDGECTL, "--controller", self.controller, *(str(a) for a in args)]
        env = {**child_env(), "EDGECTL_TOKEN_FILE": str(self.token_file)}
        if self.ca_file is not None:
            env["EDGECTL_CA_FILE"] = str(self.ca_file)
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )

    def ok(self, *args: str | Path, timeout: float = 120.0) -> str:
        result = self.run(*args, timeout=timeout)
        assert result.returncode == 0, f"edgectl {args} failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def json(self, *args: str | Path) -> Any:
        return json.loads(self.ok(*args, "--json"))


@dataclass
class Fleet:
    name: str
    device_ids: list[str]
    cli: Cli
    controller: Controller
    procs: Processes
    workdir: Path
    stack: MtlsStack  # its own mTLS broker and the controller
    agents: list[Agent]

    def devices(self) -> list[dict[str, Any]]:
        return list(self.cli.json("devices", "list", "--fleet", self.name))

    def local_predict(self, device_id: str) -> str:
        """The device's local Predict (plaintext, loopback: what a local app calls); the
        endpoint it lists is its mTLS peer listener, for neighbours only."""
        return next(a.predict_endpoint for a in self.agents if a.device_id == device_id)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.tail(20)}" for p in self.procs.started)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """A controller and three enrolled agents of a fleet of their own, every hop mTLS, on an
    mTLS broker of their own."""
    workdir = tmp_path_factory.mktemp("e2e")
    tag = uuid.uuid4().hex[:6]
    name = f"e2e-{tag}"
    ids = [f"e2e-{tag}-{i}" for i in range(1, 4)]
    with Processes(workdir / "logs") as procs:
        try:
            stack = start_mtls(procs, workdir)
            controller = stack.controller
            cli = Cli(controller.api, controller.token_file, controller.api_ca)
            trusted = workdir / "trusted.pem"
            cli.ok("keys", "init", "--out", trusted)
            agents = start_enrolled(
                procs,
                stack,
                [AgentSpec(d, name, {"site": "e2e"}) for d in ids],
                trusted_key=trusted,
                telemetry_interval_s=1.0,
            )
        except StartError as exc:
            pytest.fail(f"{exc}; the end of its log:\n{exc.log_tail}")
        fleet = Fleet(name, ids, cli, controller, procs, workdir, stack, agents)
        deadline = time.monotonic() + 30
        while {d["device_id"] for d in fleet.devices()} != set(ids):
            assert time.monotonic() < deadline, f"devices never registered\n{fleet.logs()}"
            time.sleep(0.3)
        yield fleet
