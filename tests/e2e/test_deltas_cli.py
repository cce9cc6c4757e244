"""Delta rollouts end to end: a real ``edge-controller`` that chunks the model when it makes a
release, a real ``edge-agent`` that fetches only the chunks it lacks, ``edgectl`` in
subprocesses. The release fine-tunes one layer of an eight-layer model: the device downloads
the changed chunks only (its download counter on ``/metrics``) and runs a model byte-identical
to the one released.
"""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.common import chunking, digests
from edgefleet.demo.errors import StartError
from edgefleet.demo.processes import Processes
from edgefleet.demo.stack import Agent, AgentSpec
from tests.deltas.models import mlp
from tests.e2e.conftest import Cli
from tests.mtlsfleet import start_enrolled, start_mtls

pytestmark = pytest.mark.e2e


@pytest.fixture
def one_device(tmp_path: Path) -> Iterator[tuple[Cli, Agent, str]]:
    """A controller and one enrolled agent in a fleet of their own, every hop mTLS."""
    tag = uuid.uuid4().hex[:6]
    fleet = f"delta-{tag}"
    with Processes(tmp_path / "logs") as procs:
        try:
            stack = start_mtls(procs, tmp_path)
            controller = stack.controller
            cli = Cli(controller.api, controller.token_file, controller.api_ca)
            trusted = tmp_path / "trusted.pem"
            cli.ok("keys", "init", "--out", trusted)
            (agent,) = start_enrolled(
                procs,
                stack,
                [AgentSpec(f"{fleet}-1", fleet)],
                trusted_key=trusted,
                telemetry_interval_s=1.0,
            )
        except StartError as exc:
            pytest.fail(f"{exc}; the end of its log:\n{exc.log_tail}")
        yield cli, agent, fleet


def downloaded(agent: Agent) -> float:
    """The agent's ``edgefleet_download_bytes_total`` from its ``/metrics``."""
    url = f"http://127.0.0.1:{agent.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    for line in text.splitlines():
        if line.startswith("edgefleet_download_bytes_total "):
            return float(line.split()[1])
    return 0.0


def release(cli: Cli, fleet: str, model: bytes, version: str, tmp_path: Path) -> None:
    path = tmp_path / f"mlp-{version}.onnx"
    path.write_bytes(model)
    cli.ok("model", "add", path, "--name", "mlp")
    cli.ok("release", "create", "mlp", "--version", version)
    result = cli.run("deploy", f"mlp:{version}", "--fleet", fleet, "--wait", "--timeout", "60",
                     "--json")  # fmt: skip
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert json.loads(result.stdout)["ok"] is True


def test_a_one_layer_release_moves_only_the_changed_chunks(
    one_device: tuple[Cli, Agent, str], tmp_path: Path
) -> None:
    cli, agent, fleet = one_device
    base, tuned = mlp(), mlp(tuned_layer=3)
    release(cli, fleet, base, "1.0.0", tmp_path)
    assert downloaded(agent) == len(base)

    release(cli, fleet, tuned, "1.1.0", tmp_path)

    held = {c.digest for c, _ in chunking.split(base)}
    delta = sum(c.size for c, _ in chunking.split(tuned) if c.digest not in held)
    assert downloaded(agent) == len(base) + delta
    assert 0 < delta < len(tuned) // 4
    (device,) = cli.json("devices", "list", "--fleet", fleet)
    assert device["active_release"] == "mlp:1.1.0"
    slot = f"g{device['generation_applied']}"
    assert digests.of_file(agent.data_dir / "slots" / slot / "model.onnx") == digests.of_bytes(
        tuned
    )
