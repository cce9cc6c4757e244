"""Attack: the operator API used by someone who is not an operator, or not that kind of operator.

Against a real controller (in-process, real gRPC, real SQLite, the session's Mosquitto): every
ControllerService method refuses a call without a valid token (UNAUTHENTICATED), roles and fleet
scopes are enforced (PERMISSION_DENIED), the devices' port does not serve the operator API, the
audit log records what was done and what was refused, and the token shows up in no log and in
no process's argv.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from typer.testing import CliRunner

from edgefleet.common import rpc
from edgefleet.controller import auth
from edgefleet.controller.cli import app as controller_cli
from edgefleet.controller.operators import Operator, Role
from edgefleet.demo.processes import Processes
from edgefleet.demo.stack import AgentSpec, start_agents, start_controller
from edgefleet.edgectl.app import app as edgectl
from edgefleet.edgectl.client import authorized
from edgefleet.v1 import controller_pb2 as pb
from edgefleet.v1 import controller_pb2_grpc
from tests.conftest import Broker
from tests.controller import support

SERVICE = pb.DESCRIPTOR.services_by_name["ControllerService"]
METHODS = [m.name for m in SERVICE.methods]
DEADLINE = 10.0


@pytest.fixture
def ctl(tmp_path: Path, broker: Broker) -> Iterator[support.Running]:
    running = support.start(support.settings(tmp_path / "data", broker.url))
    yield running
    running.stop()


def stub(ctl: support.Running, token: str) -> controller_pb2_grpc.ControllerServiceStub:
    return controller_pb2_grpc.ControllerServiceStub(authorized(rpc.channel(ctl.api), token))


def add(ctl: support.Running, role: str, *fleets: str) -> str:
    """A new operator's token."""
    made = ctl.stub.AddOperator(
        pb.AddOperatorRequest(name=support.unique(role), role=role, fleets=fleets),
        timeout=DEADLINE,
    )
    return made.token


def call(channel: grpc.Channel, method: str, request: Any = None) -> None:
    """Call ``method`` with an empty (or the given) request, through the generic channel API."""
    desc = SERVICE.methods_by_name[method]
    message = request or message_factory.GetMessageClass(desc.input_type)()
    path = f"/{SERVICE.full_name}/{method}"
    kw: dict[str, Any] = {
        "request_serializer": lambda m: m.SerializeToString(),
        "response_deserializer": lambda b: b,
    }
    if desc.client_streaming:
        channel.stream_unary(path, **kw)(iter([message]), timeout=DEADLINE)
    elif desc.server_streaming:
        list(channel.unary_stream(path, **kw)(message, timeout=DEADLINE))
    else:
        channel.unary_unary(path, **kw)(message, timeout=DEADLINE)


def code_of(fn: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        fn()
    err: Any = caught.value
    return err.code(), err.details()


def test_every_method_has_a_rule() -> None:
    assert set(auth.RULES) == set(METHODS)


A, B = "factory-a", "factory-b"


@pytest.mark.parametrize(
    ("role", "fleets", "method", "fleet", "allowed"),
    [
        ("viewer", (), "ListDevices", "", True),
        ("viewer", (), "GetRollout", B, True),
        ("viewer", (), "UploadModel", "", False),
        ("viewer", (), "Deploy", A, False),
        ("releaser", (), "CreateRelease", "", True),
        ("releaser", (), "Rollback", A, False),
        ("deployer", (), "Deploy", B, True),
        ("deployer", (), "InitKey", "", False),
        ("deployer", (A,), "Deploy", A, True),
        ("deployer", (A,), "Deploy", B, False),
        ("deployer", (A,), "Deploy", "", False),  # must name its own fleet
        ("deployer", (A,), "AbortRollout", B, False),
        ("deployer", (A,), "ListDevices", "", True),  # narrowed to its fleets
        ("deployer", (A,), "ListDevices", B, False),
        ("deployer", (A,), "UploadModel", "", True),  # models are not per fleet
        ("admin", (), "InitKey", "", True),
        ("admin", (), "AddOperator", "", True),
        ("admin", (A,), "InitKey", "", False),  # every fleet's key: no scoped admin
        ("admin", (A,), "AddOperator", "", False),
        ("admin", (), "NoSuchMethod", "", False),
    ],
)
def test_decide(role: str, fleets: tuple[str, ...], method: str, fleet: str, allowed: bool) -> None:
    operator = Operator("op", Role(role), fleets)
    reason = auth.decide(operator, method, auth.Target("x", fleet))
    assert (reason is None) == allowed, reason
    assert reason is None or "\n" not in reason


@pytest.mark.parametrize("method", METHODS)
def test_a_call_without_a_valid_token_is_unauthenticated(ctl: support.Running, method: str) -> None:
    revoked = add(ctl, "admin")
    ctl.stub.RevokeOperator(pb.RevokeOperatorRequest(name=whoami(ctl, revoked)), timeout=5)
    for token, why in (
        ("", "no operator token"),
        ("efo_" + "x" * 43, "invalid operator token"),
        (revoked, "is revoked"),
    ):
        with authorized(rpc.channel(ctl.api), token) as channel:
            code, detail = code_of(lambda: call(channel, method))
        assert code == grpc.StatusCode.UNAUTHENTICATED, detail
        assert why in detail and "\n" not in detail


def whoami(ctl: support.Running, token: str) -> str:
    return stub(ctl, token).WhoAmI(pb.WhoAmIRequest(), timeout=DEADLINE).name


def test_a_viewer_reads_but_cannot_deploy_or_rotate_the_key(ctl: support.Running) -> None:
    viewer = stub(ctl, add(ctl, "viewer"))
    viewer.ListDevices(pb.ListDevicesRequest(), timeout=DEADLINE)
    viewer.ListReleases(pb.ListReleasesRequest(), timeout=DEADLINE)
    for fn in (
        lambda: viewer.Deploy(pb.DeployRequest(release="x:1.0.0", fleet="f"), timeout=DEADLINE),
        lambda: viewer.InitKey(pb.InitKeyRequest(rotate=True), timeout=DEADLINE),
        lambda: viewer.ListOperators(pb.ListOperatorsRequest(), timeout=DEADLINE),
        lambda: support.upload(viewer, "sneaky", b"not a model"),
    ):
        code, detail = code_of(fn)
        assert code == grpc.StatusCode.PERMISSION_DENIED, detail
        assert "needs role" in detail


def test_a_releaser_cannot_deploy_and_a_deployer_cannot_manage_operators(
    ctl: support.Running,
) -> None:
    releaser = stub(ctl, add(ctl, "releaser"))
    code, _ = code_of(lambda: releaser.Rollback(pb.RollbackRequest(fleet="f"), timeout=DEADLINE))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    deployer = stub(ctl, add(ctl, "deployer"))
    request = pb.AddOperatorRequest(name=support.unique("me"), role="admin")
    code, _ = code_of(lambda: deployer.AddOperator(request, timeout=DEADLINE))
    assert code == grpc.StatusCode.PERMISSION_DENIED


def test_a_fleet_scoped_operator_acts_and_sees_only_its_fleets(
    ctl: support.Running, broker: Broker
) -> None:
    mine, theirs = support.unique("factory-a"), support.unique("factory-b")
    device = support.Device(broker.url)
    try:
        device.status(f"{mine}-d0", mine)
        device.status(f"{theirs}-d0", theirs)
        support.eventually(
            lambda: {mine, theirs} <= {d.fleet for d in support.all_devices(ctl.stub)},
            what="both devices registered",
        )
    finally:
        device.close()
    deployer = stub(ctl, add(ctl, "deployer", mine))

    for fn in (
        lambda: deployer.Deploy(pb.DeployRequest(release="x:1.0.0", fleet=theirs), timeout=5),
        lambda: deployer.Rollback(pb.RollbackRequest(fleet=theirs), timeout=DEADLINE),
        lambda: deployer.ListDevices(pb.ListDevicesRequest(fleet=theirs), timeout=DEADLINE),
        lambda: deployer.InitKey(pb.InitKeyRequest(), timeout=DEADLINE),  # every fleet's key
    ):
        code, detail = code_of(fn)
        assert code == grpc.StatusCode.PERMISSION_DENIED, detail

    # Its own fleet passes the gate (and then fails on its merits: no such release).
    code, detail = code_of(
        lambda: deployer.Deploy(pb.DeployRequest(release="x:1.0.0", fleet=mine), timeout=5)
    )
    assert code == grpc.StatusCode.NOT_FOUND, detail
    seen = support.all_devices(deployer, timeout=DEADLINE)  # every page, each narrowed
    assert {d.fleet for d in seen} == {mine}
    code, _ = code_of(
        lambda: deployer.ListEvents(pb.ListEventsRequest(device_id=f"{theirs}-d0"), timeout=5)
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED  # the device's fleet, from the registry


def test_a_scoped_viewer_cannot_read_another_fleets_events(ctl: support.Running) -> None:
    theirs = support.unique("factory-b")
    viewer = stub(ctl, add(ctl, "viewer", support.unique("factory-a")))
    code, _ = code_of(
        lambda: viewer.ListEvents(pb.ListEventsRequest(fleet=theirs), timeout=DEADLINE)
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED


def test_the_devices_port_does_not_serve_the_operator_api(ctl: support.Running) -> None:
    with authorized(rpc.channel(ctl.address), ctl.token) as channel:  # even with a good token
        code, _ = code_of(lambda: call(channel, "InitKey", pb.InitKeyRequest(rotate=True)))
        assert code == grpc.StatusCode.UNIMPLEMENTED
        code, _ = code_of(lambda: call(channel, "ListDevices"))
        assert code == grpc.StatusCode.UNIMPLEMENTED


def test_the_audit_log_records_ok_and_denied_calls(ctl: support.Running) -> None:
    fleet = support.unique("audited")
    ctl.stub.InitKey(pb.InitKeyRequest(), timeout=DEADLINE)
    viewer_token = add(ctl, "viewer")
    viewer_name = whoami(ctl, viewer_token)
    viewer = stub(ctl, viewer_token)
    code_of(lambda: viewer.Rollback(pb.RollbackRequest(fleet=fleet), timeout=DEADLINE))
    with rpc.channel(ctl.api) as anonymous:
        code_of(lambda: call(anonymous, "Deploy", pb.DeployRequest(release="a:1.0.0", fleet=fleet)))

    entries = ctl.stub.ListAudit(pb.ListAuditRequest(limit=100), timeout=DEADLINE).entries
    by = {(e.operator, e.method, e.outcome): e for e in entries}
    assert ("admin", "InitKey", "ok") in by
    denied = by[(viewer_name, "Rollback", "denied")]
    assert (denied.role, denied.fleet, denied.target) == ("viewer", fleet, fleet)
    assert "needs role deployer" in denied.detail and denied.peer.startswith("ipv")
    anon = by[("", "Deploy", "denied")]
    assert anon.target == f"a:1.0.0 -> {fleet}" and "no operator token" in anon.detail
    assert [e.at_ms for e in entries] == sorted((e.at_ms for e in entries), reverse=True)

    runner = CliRunner(env={"EDGECTL_TOKEN": viewer_token})  # viewers may read it
    result = runner.invoke(edgectl, ["--controller", ctl.api, "audit", "--json", "-n", "100"])
    assert result.exit_code == 0, result.output
    assert any(e["operator"] == viewer_name for e in json.loads(result.stdout))
    argv = ["--controller", ctl.api, "audit", "--limit", "5"]
    table = runner.invoke(edgectl, argv, env={"COLUMNS": "300"})
    assert table.exit_code == 0, table.output
    assert "Rollback" in table.stdout and "denied" in table.stdout


def test_edgectl_takes_its_token_from_the_environment_or_its_config_file(
    ctl: support.Running, tmp_path: Path
) -> None:
    runner = CliRunner(env={"EDGECTL_TOKEN": None, "EDGECTL_TOKEN_FILE": None})
    config = tmp_path / "edgectl.toml"
    result = runner.invoke(
        edgectl, ["--controller", ctl.api, "devices", "list"], env={"EDGECTL_CONFIG": str(config)}
    )
    assert result.exit_code == 1
    assert "no operator token" in result.stderr and "EDGECTL_TOKEN" in result.stderr

    (tmp_path / "admin.token").write_text(ctl.token + "\n")
    config.write_text(f'controller = "{ctl.api}"\ntoken_file = "admin.token"\n')
    result = runner.invoke(edgectl, ["operator", "whoami"], env={"EDGECTL_CONFIG": str(config)})
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("admin: admin")

    result = runner.invoke(
        edgectl,
        ["--controller", ctl.api, "operator", "add", "ci-bot", "--role", "releaser", "--json"],
        env={"EDGECTL_TOKEN_FILE": str(tmp_path / "admin.token")},
    )
    assert result.exit_code == 0, result.output
    made = json.loads(result.stdout)
    assert (made["role"], made["fleets"]) == ("releaser", [])
    result = runner.invoke(
        edgectl,
        ["--controller", ctl.api, "operator", "whoami", "--json"],
        env={"EDGECTL_TOKEN": made["token"]},
    )
    assert json.loads(result.stdout)["name"] == "ci-bot"


def test_operators_made_and_revoked_locally_take_effect_at_once(ctl: support.Running) -> None:
    data = ctl.controller.settings.data_dir
    name = support.unique("local")
    runner = CliRunner()
    made = runner.invoke(
        controller_cli,
        ["operator", "add", name, "--role", "viewer", "--fleet", "f1", "--data-dir", str(data)],
    )
    assert made.exit_code == 0, made.output
    token = made.stdout.strip()
    assert whoami(ctl, token) == name

    listed = runner.invoke(controller_cli, ["operator", "list", "--data-dir", str(data)])
    assert f"{name}\tviewer\tf1\tactive" in listed.stdout
    gone = runner.invoke(controller_cli, ["operator", "revoke", name, "--data-dir", str(data)])
    assert gone.exit_code == 0, gone.output
    code, detail = code_of(lambda: whoami(ctl, token))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "revoked" in detail


def test_the_token_is_in_no_log_and_no_argv(tmp_path: Path, broker: Broker) -> None:
    """The processes as ``edgectl demo`` starts them: the controller and an agent."""
    with Processes(tmp_path / "logs") as procs:
        controller = start_controller(
            procs,
            tmp_path / "controller",
            mqtt_url=broker.url,
            extra_args=["--mqtt-client-id", support.unique("ctl")],
            insecure=True,
        )
        token = controller.admin_token()
        assert controller.token_file.stat().st_mode & 0o777 == 0o600
        with authorized(rpc.channel(controller.api), token) as channel:
            api = controller_pb2_grpc.ControllerServiceStub(channel)
            key = api.InitKey(pb.InitKeyRequest(), timeout=DEADLINE)
            made = api.AddOperator(pb.AddOperatorRequest(name="ops", role="viewer"), timeout=5)
            api.RevokeOperator(pb.RevokeOperatorRequest(name="ops"), timeout=DEADLINE)
        with authorized(rpc.channel(controller.api), made.token) as channel:
            code_of(lambda: call(channel, "ListDevices"))  # refused: revoked
        trusted = tmp_path / "trusted.pem"
        trusted.write_text(key.public_key_pem)
        fleet = support.unique("argv")
        start_agents(
            procs,
            [AgentSpec(f"{fleet}-d0", fleet)],
            workdir=tmp_path,
            mqtt_url=broker.url,
            controller=controller.address,
            trusted_key=trusted,
            insecure=True,
        )
        argv = {p.name: Path(f"/proc/{p.pid}/cmdline").read_bytes() for p in procs.started}
        logs = {p.name: p.log.read_text() for p in procs.started}
    assert set(argv) >= {"controller", f"{fleet}-d0"}
    for name, cmdline in argv.items():
        assert token.encode() not in cmdline and made.token.encode() not in cmdline, name
    for name, text in logs.items():
        assert token not in text and made.token not in text, name
    assert str(controller.token_file) in logs["controller"]
