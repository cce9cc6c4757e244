"""Fixtures for the edgectl tests: a real ``edge-controller`` process on the session broker.

The controller runs as a subprocess, started the way ``edgectl demo --insecure`` starts it, with
an MQTT client id of its own so that it shares the session broker with other tests' controllers.
Plaintext on purpose: its devices are simulated MQTT clients (``tests.controller.support``'s
``Device`` and ``SimAgent``, raw sessions) that report as any device id they like on the
session broker, which an mTLS broker's per-identity ACL refuses by design. The end-to-end
fleet (``tests/e2e``) runs the real agents on mTLS.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from edgefleet.demo.errors import StartError
from edgefleet.demo.processes import Processes
from edgefleet.demo.stack import Controller, start_controller
from edgefleet.edgectl.app import app
from tests.conftest import Broker


@pytest.fixture(scope="session")
def controller(tmp_path_factory: pytest.TempPathFactory, broker: Broker) -> Iterator[Controller]:
    workdir = tmp_path_factory.mktemp("edgectl-controller")
    with Processes(workdir / "logs") as procs:
        try:
            running = start_controller(
                procs,
                workdir / "data",
                mqtt_url=broker.url,
                extra_args=["--mqtt-client-id", f"edgectl-tests-{uuid.uuid4().hex[:8]}"],
                insecure=True,  # simulated devices on the session broker: see above
            )
        except StartError as exc:
            pytest.fail(f"{exc}; the end of its log:\n{exc.log_tail}")
        yield running


class Edgectl:
    """``edgectl`` in-process through typer's ``CliRunner``, pointed at one controller's
    operator API, as its admin (the token in ``EDGECTL_TOKEN``)."""

    def __init__(self, address: str, *, token: str) -> None:
        self.address = address
        self.token = token
        self.runner = CliRunner(env={"EDGECTL_TOKEN": token})

    def __call__(self, *args: str | Path) -> Result:
        argv = ["--controller", self.address, *(str(a) for a in args)]
        return self.runner.invoke(app, argv)


@pytest.fixture
def edgectl(controller: Controller) -> Edgectl:
    return Edgectl(controller.api, token=controller.admin_token())


def one_error_line(result: Result) -> str:
    """The single ``error: ...`` line a failed command must print on stderr, and nothing else."""
    assert result.exit_code != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return lines[0]
