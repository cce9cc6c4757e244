"""Attack: reading or faking the operator API on the wire (``--tls``, the default of ``run``).

Against a real controller (in-process, real gRPC over TLS, real SQLite, the session's
Mosquitto) run with ``grpc.tls``: the operator API is TLS with the controller's server
certificate from the fleet CA, so a plaintext client (which would send its bearer token in the
clear) gets no answer, nor does a client that trusts another CA (a man in the middle's
certificate would not pass either); over TLS a good token works and a wrong one is still
UNAUTHENTICATED. ``edgectl`` finds the CA in ``--ca-file`` / ``EDGECTL_CA_FILE`` / the config
file's ``ca_file``, the ``api-ca.pem`` that ``controller.json`` names.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from typer.testing import CliRunner

from edgefleet.common import rpc
from edgefleet.controller.pki import CertificateAuthority
from edgefleet.edgectl.app import app as edgectl
from edgefleet.edgectl.client import authorized
from edgefleet.v1 import controller_pb2 as pb
from edgefleet.v1 import controller_pb2_grpc
from tests.conftest import Broker
from tests.controller import support

DEADLINE = 10.0


@pytest.fixture
def ctl(tmp_path: Path, broker: Broker) -> Iterator[support.Running]:
    s = support.settings(tmp_path / "data", broker.url)
    grpc_settings = dataclasses.replace(s.grpc, tls=True, enroll_bind="127.0.0.1:0")
    mqtt = dataclasses.replace(s.mqtt, allow_plaintext=True)  # the session broker: plaintext
    running = support.start(dataclasses.replace(s, grpc=grpc_settings, mqtt=mqtt))
    yield running
    running.stop()


def whoami(target: str, token: str, tls: rpc.ClientTls | None) -> Any:
    """``WhoAmI`` with ``token`` over a channel that trusts what ``tls`` says."""
    with authorized(rpc.channel(target, tls=tls), token) as channel:
        stub = controller_pb2_grpc.ControllerServiceStub(channel)
        return stub.WhoAmI(pb.WhoAmIRequest(), timeout=DEADLINE)


def code_of(target: str, token: str, tls: rpc.ClientTls | None) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        whoami(target, token, tls)
    err: Any = caught.value
    return err.code()  # type: ignore[no-any-return]


def fleet_ca(ctl: support.Running) -> rpc.ClientTls:
    assert ctl.api_ca is not None
    return rpc.ClientTls(ca_pem=ctl.api_ca.read_bytes())


def test_a_token_over_tls_works_and_a_wrong_one_is_unauthenticated(
    ctl: support.Running,
) -> None:
    assert whoami(ctl.api, ctl.token, fleet_ca(ctl)).name == "admin"
    wrong = code_of(ctl.api, "not-" + ctl.token, fleet_ca(ctl))
    assert wrong == grpc.StatusCode.UNAUTHENTICATED
    assert code_of(ctl.api, "", fleet_ca(ctl)) == grpc.StatusCode.UNAUTHENTICATED


def test_a_plaintext_client_gets_no_answer(ctl: support.Running) -> None:
    """Even with the admin's token: the handshake fails, no call is served."""
    assert code_of(ctl.api, ctl.token, None) == grpc.StatusCode.UNAVAILABLE


def test_a_client_that_trusts_another_ca_refuses_the_server(
    ctl: support.Running, tmp_path: Path
) -> None:
    other = CertificateAuthority.open(tmp_path / "other-ca", now=dt.datetime.now(dt.UTC))
    tls = rpc.ClientTls(ca_pem=other.bundle_pem)
    assert code_of(ctl.api, ctl.token, tls) == grpc.StatusCode.UNAVAILABLE


def test_controller_json_names_the_ca_and_edgectl_uses_it(
    ctl: support.Running, tmp_path: Path
) -> None:
    state = json.loads(ctl.controller.settings.state_file.read_text())
    assert Path(state["api_ca"]) == ctl.api_ca
    env = {"EDGECTL_TOKEN": ctl.token, "EDGECTL_CONFIG": str(tmp_path / "none.toml")}
    argv = ["--controller", ctl.api, "operator", "whoami"]

    plain = CliRunner(env={**env, "EDGECTL_CA_FILE": None}).invoke(edgectl, argv)
    assert plain.exit_code == 1 and "EDGECTL_CA_FILE" in plain.stderr, plain.output

    by_env = CliRunner(env={**env, "EDGECTL_CA_FILE": state["api_ca"]}).invoke(edgectl, argv)
    assert by_env.exit_code == 0 and "admin" in by_env.stdout, by_env.output

    by_option = CliRunner(env=env).invoke(edgectl, ["--ca-file", state["api_ca"], *argv])
    assert by_option.exit_code == 0 and "admin" in by_option.stdout, by_option.output

    config = tmp_path / "edgectl.toml"
    config.write_text(f'controller = "{ctl.api}"\nca_file = "{state["api_ca"]}"\n')
    by_config = CliRunner(env={**env, "EDGECTL_CONFIG": str(config)}).invoke(
        edgectl, ["operator", "whoami"]
    )
    assert by_config.exit_code == 0 and "admin" in by_config.stdout, by_config.output
