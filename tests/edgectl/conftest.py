"""Fixtures for the edgectl tests: a real ``edge-controller`` process, every hop mTLS.

The controller runs as a subprocess, started the way ``edgectl demo`` starts it
(``tests.mtlsfleet.start_mtls``: the run's certificates, an mTLS Mosquitto of the session's own,
``edge-controller --tls``); ``edgectl`` reaches its operator API on TLS with the controller's
api CA (``EDGECTL_CA_FILE``). The devices are simulated MQTT clients
(``tests.controller.support``'s ``Device`` and ``SimAgent``), each enrolled for real first
(``enroll``: a one-time token from EnrollDevice, a CSR with the device's own key through the
agent's ``enrolling.enroll``, the broker made to reread its ACL): on the broker each is its
certificate's identity and may publish only its own reports.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest
from typer.testing import CliRunner, Result

from edgefleet.agent import enrolling
from edgefleet.agent.identity import IdentityFiles
from edgefleet.demo.errors import StartError
from edgefleet.demo.processes import Processes
from edgefleet.demo.stack import Controller
from edgefleet.edgectl.app import app
from edgefleet.edgectl.client import ControllerClient
from tests.controller import support
from tests.mtlsfleet import MtlsStack, start_mtls


class Enroll(Protocol):
    def __call__(self, fleet: str, *device_ids: str) -> list[IdentityFiles]: ...


class ConnectDevice(Protocol):
    def __call__(self, fleet: str, device_id: str) -> support.Device: ...


@pytest.fixture(scope="session")
def mtls_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MtlsStack]:
    """An mTLS Mosquitto of the edgectl tests' own and an ``edge-controller --tls`` on it."""
    workdir = tmp_path_factory.mktemp("edgectl-controller")
    with Processes(workdir / "logs") as procs:
        try:
            stack = start_mtls(procs, workdir)
        except StartError as exc:
            pytest.fail(f"{exc}; the end of its log:\n{exc.log_tail}")
        yield stack


@pytest.fixture(scope="session")
def controller(mtls_stack: MtlsStack) -> Controller:
    return mtls_stack.controller


@pytest.fixture(scope="session")
def broker_url(mtls_stack: MtlsStack) -> str:
    """The mTLS broker's ``mqtts://`` URL, for enrolled devices only."""
    return mtls_stack.broker.url


@pytest.fixture(scope="session")
def enroll(mtls_stack: MtlsStack, tmp_path_factory: pytest.TempPathFactory) -> Enroll:
    """``enroll(fleet, *device_ids)``: each device enrolled for real (its token from
    EnrollDevice, its own key and CSR, the certificate back into its identity files), then
    the broker made to reread the ACL the controller rewrote; the devices' identity files."""
    stack = mtls_stack
    ca_pem = stack.mtls.ca_file.read_bytes()
    where = tmp_path_factory.mktemp("identities")

    def enroll_devices(fleet: str, *device_ids: str) -> list[IdentityFiles]:
        made = []
        with stack.controller.client() as client:
            for device_id in device_ids:
                token = client.enroll_device(device_id, fleet=fleet, labels={}).token
                files = IdentityFiles(where / device_id)
                enrolling.enroll(stack.controller.enroll, token, files=files, ca_pem=ca_pem)
                made.append(files)
        stack.broker.reload_acl()
        return made

    return enroll_devices


@pytest.fixture
def enrolled_device(broker_url: str, enroll: Enroll) -> Iterator[ConnectDevice]:
    """``enrolled_device(fleet, device_id)``: the device enrolled, then a ``support.Device``
    on the mTLS broker as that identity (once the broker's ACL lets it in); closed after the
    test."""
    made: list[support.Device] = []

    def connect(fleet: str, device_id: str) -> support.Device:
        [identity] = enroll(fleet, device_id)
        made.append(support.Device(broker_url, identity=identity))
        return made[-1]

    yield connect
    for device in made:
        device.close()


class Edgectl:
    """``edgectl`` in-process through typer's ``CliRunner``, pointed at one controller's
    operator API (TLS on ``ca_file``, in ``EDGECTL_CA_FILE``), as its admin (the token in
    ``EDGECTL_TOKEN``)."""

    def __init__(self, address: str, *, token: str, ca_file: Path | None = None) -> None:
        self.address = address
        self.token = token
        self.ca_file = ca_file
        env = {"EDGECTL_TOKEN": token}
        if ca_file is not None:
            env["EDGECTL_CA_FILE"] = str(ca_file)
        self.runner = CliRunner(env=env)

    def __call__(self, *args: str | Path) -> Result:
        argv = ["--controller", self.address, *(str(a) for a in args)]
        return self.runner.invoke(app, argv)

    def client(self) -> ControllerClient:
        """A client of the same operator API, as the same operator."""
        return ControllerClient(self.address, token=self.token, ca_file=self.ca_file)


@pytest.fixture
def edgectl(controller: Controller) -> Edgectl:
    assert controller.api_ca is not None, "the operator API is TLS"
    return Edgectl(controller.api, token=controller.admin_token(), ca_file=controller.api_ca)


def one_error_line(result: Result) -> str:
    """The single ``error: ...`` line a failed command must print on stderr, and nothing else."""
    assert result.exit_code != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return lines[0]
