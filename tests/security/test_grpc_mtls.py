"""Attack: gRPC to the controller and between agents, against real parts: a real controller in
this process with ``--tls`` (its real gRPC servers: the devices' mTLS port, the enrollment TLS
port), devices enrolled for real (``edge-agent enroll --ca-file``: a key made here, a CSR, a
certificate from the fleet CA), real agents with their real Predict and peer servers and ONNX
Runtime, a real Mosquitto, and an attacker's own certificates and gRPC servers, all made for
the run.

Before, every channel was plaintext: anyone who reached the devices' port fetched any blob, a
revoked device kept fetching, enrollment tokens crossed the network in clear, and a failover
went to whatever answered at the endpoint, unauthenticated both ways.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from typer.testing import CliRunner

from edgefleet.agent import config
from edgefleet.agent.client import Channels
from edgefleet.agent.daemon import Agent
from edgefleet.agent.enrolling import enroll as enroll_device
from edgefleet.agent.enrolling import renew
from edgefleet.agent.identity import IdentityFiles
from edgefleet.common import artifacts, identities, rpc, wire
from edgefleet.common.artifacts import BlobStore
from edgefleet.common.errors import FetchError
from edgefleet.controller.config import GrpcSettings
from edgefleet.controller.enrollment import Enrollment
from edgefleet.controller.pki import CertificateAuthority
from edgefleet.demo import digits
from edgefleet.edgectl.keys import trusted_pem
from edgefleet.v1 import artifact_pb2, artifact_pb2_grpc, inference_pb2, inference_pb2_grpc
from edgefleet.v1 import controller_pb2 as pb
from tests.agent.clirun import invoke as agent_invoke
from tests.agent.helpers import AgentProcess, predict, wait_for
from tests.conftest import Broker, free_port
from tests.controller import support

DEADLINE = 30.0
NOW = dt.datetime.now(dt.UTC)


def tls_settings(data: Path, broker: Broker) -> Any:
    """mTLS gRPC on the session's plaintext broker (``--insecure-mqtt``: the hops under test
    here are gRPC; ``tests/security/test_broker_mtls.py`` covers the broker)."""
    s = support.settings(data, broker.url)
    grpc_settings = dataclasses.replace(s.grpc, tls=True, enroll_bind="127.0.0.1:0")
    mqtt = dataclasses.replace(s.mqtt, allow_plaintext=True)
    return dataclasses.replace(s, grpc=grpc_settings, mqtt=mqtt)


@pytest.fixture
def ctl(tmp_path: Path, broker: Broker) -> Iterator[support.Running]:
    running = support.start(tls_settings(tmp_path / "ctl", broker))
    yield running
    running.stop()


def registry(ctl: support.Running) -> Enrollment:
    assert ctl.controller.enrollment is not None
    return ctl.controller.enrollment


def ca_file(ctl: support.Running) -> Path:
    return ctl.controller.settings.ca_dir / "ca.pem"


def enroll(
    ctl: support.Running, device: str, data_dir: Path, *, fleet: str = "lab", ca: Path | None = None
) -> Any:
    """``edge-agent enroll`` on the enrollment port, the CA file handed over with the token."""
    token = registry(ctl).enroll_device(device, fleet=fleet, labels={}).token
    return agent_invoke(
        ["enroll", "--controller", ctl.controller.enroll_address,
         "--ca-file", str(ca or ca_file(ctl)), "--data-dir", str(data_dir)],
        env={"EDGE_AGENT_ENROLL_TOKEN": token},
    )  # fmt: skip


def own_key_pair(ca: CertificateAuthority, device: str, fleet: str) -> tuple[bytes, bytes]:
    """(key, certificate) a CA issues directly, on no registry's record."""
    key = identities.make_key()
    issued = ca.issue_device(
        identities.make_csr(key),
        device_id=device,
        fleet=fleet,
        lifetime=dt.timedelta(hours=1),
        now=NOW,
    )
    return identities.key_pem(key), issued.pem


def stat_code(target: str, digest: str, tls: rpc.ClientTls | None) -> grpc.StatusCode:
    with rpc.channel(target, tls=tls) as channel:
        stub = artifact_pb2_grpc.ArtifactServiceStub(channel)
        try:
            stub.Stat(artifact_pb2.StatRequest(digest=digest), timeout=10)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def test_artifact_service_serves_only_enrolled_unrevoked_devices(
    ctl: support.Running, tmp_path: Path
) -> None:
    blob = b"release bytes " * 1000
    digest = BlobStore(ctl.controller.settings.blobs_dir).put(blob)
    result = enroll(ctl, "cam-1", tmp_path / "cam-1")
    assert result.exit_code == 0, result.output
    files = IdentityFiles.in_data_dir(tmp_path / "cam-1")

    # the enrolled device fetches its blob over mTLS
    partial = tmp_path / "blob.partial"
    assert artifacts.fetch(ctl.address, digest, partial, tls=files.client_tls()) == len(blob)
    assert partial.read_bytes() == blob

    ca_pem = ca_file(ctl).read_bytes()
    other_ca = CertificateAuthority.open(tmp_path / "other-ca", now=NOW)
    foreign_key, foreign_cert = own_key_pair(other_ca, "cam-1", "lab")
    ghost_key, ghost_cert = own_key_pair(registry(ctl).ca, "ghost", "lab")
    # plaintext, TLS without a certificate, a certificate of another CA: no handshake at all
    assert stat_code(ctl.address, digest, None) == grpc.StatusCode.UNAVAILABLE
    assert stat_code(ctl.address, digest, rpc.ClientTls(ca_pem)) == grpc.StatusCode.UNAVAILABLE
    foreign = rpc.ClientTls(ca_pem, key_pem=foreign_key, cert_pem=foreign_cert)
    assert stat_code(ctl.address, digest, foreign) == grpc.StatusCode.UNAVAILABLE
    # the fleet CA's signature, but no certificate the registry issued
    ghost = rpc.ClientTls(ca_pem, key_pem=ghost_key, cert_pem=ghost_cert)
    assert stat_code(ctl.address, digest, ghost) == grpc.StatusCode.UNAUTHENTICATED
    refused = ctl.controller.device_gate.refused
    assert refused == 1

    registry(ctl).revoke("cam-1")
    assert stat_code(ctl.address, digest, files.client_tls()) == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(FetchError, match="revoked"):
        artifacts.fetch(ctl.address, digest, tmp_path / "again.partial", tls=files.client_tls())
    again = tmp_path / "again.partial"
    assert not again.exists() or again.stat().st_size == 0
    assert ctl.controller.device_gate.refused == refused + 2


def test_enrollment_checks_the_controller_against_the_ca_file(
    ctl: support.Running, tmp_path: Path
) -> None:
    """A device with no certificate enrolls over TLS; a server its CA file does not vouch for
    never sees the token (a later enroll with the same token still works); plaintext to a
    --tls controller, or neither --ca-file nor --insecure, fails."""
    other = CertificateAuthority.open(tmp_path / "other-ca", now=NOW)
    token = registry(ctl).enroll_device("cam-2", fleet="lab", labels={}).token
    data = tmp_path / "cam-2"

    def run(*args: str) -> Any:
        return agent_invoke(
            ["enroll", "--controller", ctl.controller.enroll_address, "--data-dir", str(data),
             *args],
            env={"EDGE_AGENT_ENROLL_TOKEN": token},
        )  # fmt: skip

    wrong_ca = tmp_path / "wrong-ca.pem"
    wrong_ca.write_bytes(other.bundle_pem)
    assert run("--ca-file", str(wrong_ca)).exit_code == 1
    assert run("--insecure").exit_code == 1  # the port speaks TLS only
    assert run().exit_code == 2
    assert not IdentityFiles.in_data_dir(data).exists()
    done = run("--ca-file", str(ca_file(ctl)))
    assert done.exit_code == 0, done.output
    assert "device=cam-2 fleet=lab" in done.output
    # renewal over the mTLS device port: the handshake's certificate is the proof
    files = IdentityFiles.in_data_dir(data)
    before = files.identity().serial
    assert renew(ctl.address, files=files, tls=True).serial != before


def test_a_plaintext_controller_and_insecure_agent_say_so(
    tmp_path: Path, broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    plain = support.start(support.settings(tmp_path / "plain", broker.url))
    try:
        assert "PLAINTEXT" in caplog.text and plain.controller.enroll_address == ""
        token = registry(plain).enroll_device("cam-3", fleet="lab", labels={}).token
        files = IdentityFiles.in_data_dir(tmp_path / "cam-3")
        enroll_device(plain.address, token, files=files)  # plaintext: no CA to check against
        key_file = tmp_path / "trusted.pem"
        plain.stub.InitKey(pb.InitKeyRequest(), timeout=DEADLINE)
        key_file.write_text(trusted_pem(list(plain.stub.ListKeys(pb.ListKeysRequest()).keys)))
        caplog.clear()
        agent = Agent(agent_settings(plain, broker, tmp_path / "cam-3", key_file, insecure=True))
        try:
            assert not agent.tls and agent.peer_server is None
            assert (
                "--insecure: gRPC to the controller and to neighbours is plaintext although "
                "this device is enrolled" in caplog.text
            )
        finally:
            agent.stop()
        token = registry(plain).enroll_device("cam-3", fleet="lab", labels={}).token
        result = agent_invoke(
            ["enroll", "--controller", plain.address, "--insecure",
             "--data-dir", str(tmp_path / "cam-3")],
            env={"EDGE_AGENT_ENROLL_TOKEN": token},
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert "--insecure: the enrollment token goes to" in result.output
    finally:
        plain.stop()


# --- failover between enrolled agents ---------------------------------------------------------


def agent_settings(
    ctl: support.Running, broker: Broker, data: Path, key_file: Path, **more: Any
) -> config.AgentSettings:
    """An agent whose id and fleet come from its certificate (enrolled in ``data``)."""
    return config.merge(
        {
            "mqtt": broker.url,
            "controller": ctl.address,
            "data_dir": data,
            "predict_listen": "127.0.0.1:0",
            "metrics_port": -1,
            "trusted_keys": (key_file,),
            "telemetry_interval": 1.0,
            **more,
        }
    )


class Impostor(inference_pb2_grpc.InferenceServiceServicer):
    """An mTLS Predict server with a certificate of the attacker's choosing; counts calls."""

    def __init__(self, key_pem: bytes, cert_pem: bytes, client_ca: bytes) -> None:
        self.calls = 0
        self._lock = threading.Lock()
        self._pool = futures.ThreadPoolExecutor(max_workers=2)
        self.server = grpc.server(self._pool)
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(self, self.server)
        creds = rpc.server_credentials(key_pem, cert_pem, client_ca_pem=client_ca)
        self.endpoint = f"127.0.0.1:{self.server.add_secure_port('127.0.0.1:0', creds)}"
        self.server.start()

    def Predict(
        self, request: inference_pb2.PredictRequest, context: grpc.ServicerContext
    ) -> inference_pb2.PredictResponse:
        with self._lock:
            self.calls += 1
        return inference_pb2.PredictResponse(device_id="whoever", release="digits:6.6.6")

    def stop(self) -> None:
        self.server.stop(0).wait()
        self._pool.shutdown(wait=True)


def peer_predict(endpoint: str, tls: rpc.ClientTls | None, x: Any) -> grpc.StatusCode:
    request = inference_pb2.PredictRequest(inputs=[wire.array_to_pb("pixels", x)])
    with rpc.channel(endpoint, tls=tls) as channel:
        try:
            inference_pb2_grpc.InferenceServiceStub(channel).Predict(request, timeout=10)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def call_code(endpoint: str, tls: rpc.ClientTls, method: str, request: Any) -> grpc.StatusCode:
    with rpc.channel(endpoint, tls=tls) as channel:
        try:
            getattr(inference_pb2_grpc.InferenceServiceStub(channel), method)(request, timeout=10)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


@pytest.mark.slow
def test_failover_between_enrolled_agents_is_mtls_and_forged_peers_get_nothing(
    ctl: support.Running,
    broker: Broker,
    tmp_path: Path,
    digits_model: digits.TrainedModel,
    digits_data: digits.DigitsData,
) -> None:
    ctl.stub.InitKey(pb.InitKeyRequest(), timeout=DEADLINE)
    key_file = tmp_path / "trusted.pem"
    key_file.write_text(trusted_pem(list(ctl.stub.ListKeys(pb.ListKeysRequest()).keys)))
    fleet, name = support.unique("fleet"), support.unique("digits")
    serving_id, bare_id = f"{fleet}-serving", f"{fleet}-bare"
    for device, where in ((serving_id, fleet), (bare_id, fleet), ("outsider", "elsewhere")):
        result = enroll(ctl, device, tmp_path / device, fleet=where)
        assert result.exit_code == 0, result.output
    agents: list[Agent] = []
    impostors: list[Impostor] = []
    x = digits_data.x_test[:4]
    try:
        serving = Agent(agent_settings(ctl, broker, tmp_path / serving_id, key_file))
        agents.append(serving)
        serving.start()
        assert serving.tls and serving.peer_endpoint
        support.upload(ctl.stub, name, digits_model.onnx_bytes)
        release = f"{name}:1.0.0"
        ctl.stub.CreateRelease(pb.CreateReleaseRequest(name=name, version="1.0.0"), timeout=30)
        support.eventually(
            lambda: ctl.stub.ListDevices(pb.ListDevicesRequest(fleet=fleet)).devices,
            what="the serving device registered",
        )
        ctl.stub.Deploy(pb.DeployRequest(release=release, fleet=fleet), timeout=DEADLINE)
        # the blobs came over the controller's mTLS port
        wait_for("the serving agent active", lambda: serving.predictor.current, timeout=60)

        bare = Agent(agent_settings(ctl, broker, tmp_path / bare_id, key_file))
        agents.append(bare)
        bare_endpoint = bare.start().predict
        table = bare.neighbours

        def vouched() -> bool:
            roster = table.roster
            return roster is not None and roster.endpoint_of(serving_id) == serving.peer_endpoint

        wait_for("the roster naming the neighbour's mTLS endpoint", vouched)

        def knows_bare() -> bool:  # the serving agent takes forwarded calls from listed peers
            roster = serving.neighbours.roster
            return roster is not None and roster.endpoint_of(bare_id) == bare.peer_endpoint

        wait_for("the serving agent's roster naming the bare agent", knows_bare)
        wait_for("the neighbour's presence", lambda: [n for n in table.snapshot() if n.healthy])
        reply = predict(bare_endpoint, {"pixels": x})
        assert reply.served_by_neighbour
        assert (reply.device_id, reply.release) == (serving_id, release)
        assert serving.peer_servicer is not None and serving.peer_servicer.refused == 0

        # forged callers at the serving agent's peer listener
        peer = serving.peer_endpoint
        ca_pem = ca_file(ctl).read_bytes()
        outsider = IdentityFiles.in_data_dir(tmp_path / "outsider")
        ghost_key, ghost_cert = own_key_pair(registry(ctl).ca, "ghost", fleet)
        foreign_key, foreign_cert = own_key_pair(
            CertificateAuthority.open(tmp_path / "other-ca", now=NOW), bare_id, fleet
        )

        def as_(key: bytes | None, cert: bytes | None) -> rpc.ClientTls:
            return rpc.ClientTls(ca_pem, key_pem=key, cert_pem=cert, server_name=serving_id)

        assert peer_predict(peer, None, x) == grpc.StatusCode.UNAVAILABLE  # plaintext
        assert peer_predict(peer, as_(None, None), x) == grpc.StatusCode.UNAVAILABLE  # no cert
        foreign = as_(foreign_key, foreign_cert)
        assert peer_predict(peer, foreign, x) == grpc.StatusCode.UNAVAILABLE  # another CA
        other_fleet = outsider.client_tls(server_name=serving_id)
        assert peer_predict(peer, other_fleet, x) == grpc.StatusCode.PERMISSION_DENIED
        not_listed = as_(ghost_key, ghost_cert)
        assert peer_predict(peer, not_listed, x) == grpc.StatusCode.PERMISSION_DENIED
        assert serving.peer_servicer.refused == 2
        mine = IdentityFiles.in_data_dir(tmp_path / bare_id).client_tls(server_name=serving_id)
        assert peer_predict(peer, mine, x) == grpc.StatusCode.OK  # the real neighbour

        # the controller (its own client certificate) may Benchmark there, a device may not
        as_controller = ctl.controller._device_client_tls(serving_id)
        assert as_controller is not None
        bench = inference_pb2.BenchmarkRequest()  # unsigned: refused by the agent, not the gate
        assert call_code(peer, as_controller, "Benchmark", bench) not in (
            grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.OK,
        )
        assert call_code(peer, mine, "Benchmark", bench) == grpc.StatusCode.PERMISSION_DENIED
        info = inference_pb2.ModelInfoRequest()
        assert call_code(peer, as_controller, "ModelInfo", info) == grpc.StatusCode.OK

        # forged servers: the forwarder's channels check the server is the listed device
        bare_files = IdentityFiles.in_data_dir(tmp_path / bare_id)
        channels = Channels(tls=lambda d: bare_files.client_tls(server_name=d))
        impostors += [
            Impostor(*own_key_pair(registry(ctl).ca, "mallory", fleet), ca_pem),  # not serving
            Impostor(foreign_key, foreign_cert, ca_pem),  # another CA
        ]
        try:
            for impostor in impostors:
                stub = channels.stub(impostor.endpoint, serving_id)
                with pytest.raises(grpc.RpcError) as refused:
                    stub.Predict(inference_pb2.PredictRequest(), timeout=10)
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
                assert impostor.calls == 0
        finally:
            channels.close()
    finally:
        for agent in reversed(agents):
            agent.stop()
        for impostor in impostors:
            impostor.stop()


def enrolled_agent(
    ctl: support.Running, broker: Broker, tmp_path: Path, device_id: str
) -> AgentProcess:
    """A real ``edge-agent run`` (not started) for ``device_id``, enrolled with ``ctl`` into
    ``tmp_path/device_id`` and trusting its signing keys: mTLS, no ``--insecure``."""
    data = tmp_path / device_id
    assert enroll(ctl, device_id, data).exit_code == 0
    key_file = tmp_path / "trusted.pem"
    ctl.stub.InitKey(pb.InitKeyRequest(), timeout=DEADLINE)
    key_file.write_text(trusted_pem(list(ctl.stub.ListKeys(pb.ListKeysRequest()).keys)))
    return AgentProcess(
        device_id=device_id,
        data_dir=data,
        broker_url=broker.url,
        controller=ctl.address,
        key_file=key_file,
        insecure=False,
    )


def test_edge_agent_run_enrolled_is_mtls_and_insecure_says_so(
    ctl: support.Running, broker: Broker, tmp_path: Path
) -> None:
    """The real ``edge-agent run`` process: enrolled, it opens the mTLS peer listener (in
    ``agent.json``) and says gRPC is mTLS; with ``--insecure`` it warns and opens none. The
    session broker is plaintext: ``--insecure-mqtt`` (warned) lets the enrolled agent use it."""
    agent = enrolled_agent(ctl, broker, tmp_path, "cam-9")
    agent.args.append("--insecure-mqtt")
    try:
        info = agent.start()
        assert info["peer_endpoint"] and info["peer_endpoint"] != info["predict_endpoint"]
        assert agent.terminate() == 0
        assert "gRPC to the controller and to neighbours is mTLS" in agent.output()
        assert "plaintext broker mqtt://127.0.0.1" in agent.output()
        agent.args.append("--insecure")
        info = agent.start()
        assert info["peer_endpoint"] == ""
        assert agent.terminate() == 0
        assert (
            "--insecure: gRPC to the controller and to neighbours is plaintext although this "
            "device is enrolled" in agent.output()
        )
    finally:
        agent.kill()


def test_edge_controller_run_tls_serves_mtls_and_says_where(tmp_path: Path, broker: Broker) -> None:
    """The real ``edge-controller run --enroll-listen`` process, mTLS by default (no --tls
    given; ``--insecure-mqtt`` for the plaintext session broker, warned): controller.json names
    the enrollment listener, a caller without a certificate gets no blob; the help text
    documents the options of both commands."""
    data = tmp_path / "data"
    port, enroll_port, api = free_port(), free_port(), free_port()
    cmd = [sys.executable, "-m", "edgefleet.controller", "run", "--data-dir", str(data),
           "--grpc", f"127.0.0.1:{port}", "--api", f"127.0.0.1:{api}",
           "--enroll-listen", f"127.0.0.1:{enroll_port}", "--mqtt", broker.url,
           "--mqtt-client-id", support.unique("cli"), "--insecure-mqtt"]  # fmt: skip
    env = {**os.environ, "EDGEFLEET_LOG_JSON": "0"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        state = wait_for_json(data / "controller.json", proc)
        assert state["enroll"] == f"127.0.0.1:{enroll_port}" and state["tls"] is True
        ca = rpc.ClientTls((data / "ca" / "ca.pem").read_bytes())
        digest = "sha256:" + "0" * 64
        assert stat_code(f"127.0.0.1:{port}", digest, ca) == grpc.StatusCode.UNAVAILABLE
        assert stat_code(f"127.0.0.1:{port}", digest, None) == grpc.StatusCode.UNAVAILABLE
        with rpc.channel(state["enroll"], tls=ca) as channel:  # the server's name checks out
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        api_ca = rpc.ClientTls(Path(state["api_ca"]).read_bytes())  # the operator API: TLS
        with rpc.channel(state["api"], tls=api_ca) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert b"plaintext broker mqtt://" in out and b"(--insecure-mqtt)" in out

    from edgefleet.controller.cli import app as controller_cli

    result = CliRunner().invoke(controller_cli, ["run", "--help"], terminal_width=200)
    assert "--tls" in result.output and "--enroll-listen" in result.output
    result = agent_invoke(["run", "--help"])
    assert "--insecure" in result.output and "--peer-listen" in result.output
    assert GrpcSettings().tls is False  # the default stays plaintext (README: Security)


def wait_for_json(path: Path, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        try:
            found: dict[str, Any] = json.loads(path.read_text())
            return found
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        assert time.monotonic() < deadline, f"no {path}"
        time.sleep(0.05)
