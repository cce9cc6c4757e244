"""Device enrollment and certificates, against a real controller over real gRPC.

Tokens are good once and expire; the device's key is made on the device and only a CSR goes
over the wire; the certificate names the device and its fleet; renewal is proved by the
current certificate and happens by itself at 2/3 of the lifetime (clocks injected, lifetimes
of seconds); a revoked device cannot renew; a device offline across its certificate's expiry
enrolls again with a new token and keeps its installed model; and, opted in end to end, an
enrolled agent and the controller talk over a Mosquitto that requires their certificates.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from typer.testing import CliRunner

from edgefleet.agent import config as agent_config
from edgefleet.agent.daemon import Agent
from edgefleet.agent.enrolling import Renewer, renew
from edgefleet.agent.identity import IdentityFiles, renew_due
from edgefleet.common import identities, rpc
from edgefleet.common.errors import EdgeFleetError
from edgefleet.controller.cli import app as controller_cli
from edgefleet.controller.config import MqttSettings, PkiSettings
from edgefleet.controller.identityservice import EnrollmentServicer
from edgefleet.edgectl.app import app as edgectl
from edgefleet.v1 import controller_pb2, enroll_pb2_grpc
from edgefleet.v1 import enroll_pb2 as pb
from tests.agent.clirun import invoke as agent_invoke
from tests.agent.helpers import ArtifactServer, Signer, Watcher, install, wait_for
from tests.conftest import Broker, mosquitto_available
from tests.controller import support

HOUR = 3600.0


class Clock:
    """Wall-clock seconds that move only when told to (thread-safe)."""

    def __init__(self) -> None:
        self._now = time.time()
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds

    def at(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self(), tz=dt.UTC)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ctl(tmp_path: Path, broker: Broker, clock: Clock) -> Iterator[support.Running]:
    s = support.settings(tmp_path / "controller", broker.url)
    s = replace(s, pki=PkiSettings(cert_lifetime_s=HOUR, token_ttl_s=60))
    running = support.start(s, clock=clock)
    yield running
    running.stop()


def token_for(ctl: support.Running, device: str, *, fleet: str = "lab", ttl: str = "") -> str:
    """``edgectl device enroll`` as an operator runs it (the admin token in the environment)."""
    args = ["-c", ctl.api, "device", "enroll", device, "--fleet", fleet, "--labels", "site=t"]
    result = CliRunner().invoke(
        edgectl, [*args, *(["--ttl", ttl] if ttl else [])], env={"EDGECTL_TOKEN": ctl.token}
    )
    assert result.exit_code == 0, result.output
    return result.stdout.strip().splitlines()[-1]


def agent_enroll(ctl: support.Running, token: str, data_dir: Path) -> Any:
    """``edge-agent enroll`` with the token in the environment, never in argv."""
    return agent_invoke(
        ["enroll", "--controller", ctl.address, "--insecure", "--data-dir", str(data_dir)],
        env={"EDGE_AGENT_ENROLL_TOKEN": token},
    )


def enroll_stub(ctl: support.Running) -> Iterator[enroll_pb2_grpc.EnrollmentServiceStub]:
    channel = rpc.channel(ctl.address)
    try:
        yield enroll_pb2_grpc.EnrollmentServiceStub(channel)
    finally:
        channel.close()


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


# --- enrolling ------------------------------------------------------------------------------


def test_enroll_makes_the_key_on_the_device_and_a_certificate_naming_device_and_fleet(
    ctl: support.Running, tmp_path: Path
) -> None:
    token = token_for(ctl, "cam-1", fleet="factory-a")
    result = agent_enroll(ctl, token, tmp_path / "agent")
    assert result.exit_code == 0, result.output
    assert "device=cam-1 fleet=factory-a" in result.stdout
    files = IdentityFiles.in_data_dir(tmp_path / "agent")
    assert files.key.stat().st_mode & 0o777 == 0o600
    assert files.cert.stat().st_mode & 0o777 == 0o600
    assert files.ca.stat().st_mode & 0o777 == 0o644
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "cam-1"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == (
        "factory-a"
    )
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.UniformResourceIdentifier)) == {
        "urn:edgefleet:device:cam-1",
        "urn:edgefleet:fleet:factory-a",
    }
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    ca = x509.load_pem_x509_certificate(files.ca.read_bytes())
    cert.verify_directly_issued_by(ca)
    # The certificate is for the key on the device, and lives as long as configured.
    assert cert.public_key() == files.load_key().public_key()
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(seconds=HOUR) <= lifetime <= dt.timedelta(seconds=HOUR * 1.2)
    # The registry says so too.
    listed = CliRunner().invoke(
        edgectl, ["-c", ctl.api, "device", "list", "--json"], env={"EDGECTL_TOKEN": ctl.token}
    )
    assert '"device_id": "cam-1"' in listed.stdout and f'"{cert.serial_number:x}"' in listed.stdout


def test_a_token_is_good_once(ctl: support.Running, tmp_path: Path) -> None:
    token = token_for(ctl, "cam-2")
    assert agent_enroll(ctl, token, tmp_path / "first").exit_code == 0
    again = agent_enroll(ctl, token, tmp_path / "second")
    assert again.exit_code == 1
    assert "already used" in again.output
    assert not (tmp_path / "second" / "identity" / "device.crt").exists()


def test_an_expired_or_unknown_token_is_refused(ctl: support.Running, clock: Clock) -> None:
    token = token_for(ctl, "cam-3", ttl="30s")
    csr = identities.make_csr(identities.make_key())
    clock.advance(31)
    for stub in enroll_stub(ctl):
        expired = code_of(lambda: stub.Enroll(pb.EnrollRequest(token=token, csr_der=csr)))
        made_up = code_of(lambda: stub.Enroll(pb.EnrollRequest(token="ef1.nope", csr_der=csr)))
        assert expired == made_up == grpc.StatusCode.UNAUTHENTICATED
    # A fresh token works; the expired one stays dead.
    fresh = token_for(ctl, "cam-3")
    for stub in enroll_stub(ctl):
        assert stub.Enroll(pb.EnrollRequest(token=fresh, csr_der=csr), timeout=10).certificate_pem
        assert (
            code_of(lambda: stub.Enroll(pb.EnrollRequest(token=token, csr_der=csr)))
            == grpc.StatusCode.UNAUTHENTICATED
        )


def test_only_the_csr_leaves_the_device(ctl: support.Running, tmp_path: Path) -> None:
    """Every byte the agent sends is recorded by a server in between: the private key is not
    among them, in PEM or as its raw scalar."""
    assert ctl.controller.enrollment is not None
    seen: list[bytes] = []

    class Recording(EnrollmentServicer):
        def Enroll(
            self, request: pb.EnrollRequest, context: grpc.ServicerContext
        ) -> pb.EnrollResponse:
            seen.append(request.SerializeToString())
            return super().Enroll(request, context)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    enroll_pb2_grpc.add_EnrollmentServiceServicer_to_server(
        Recording(ctl.controller.enrollment), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        token = token_for(ctl, "cam-4")
        result = agent_invoke(
            [
                "enroll",
                "--controller",
                f"127.0.0.1:{port}",
                "--insecure",
                "--data-dir",
                str(tmp_path),
            ],
            env={"EDGE_AGENT_ENROLL_TOKEN": token},
        )
        assert result.exit_code == 0, result.output
    finally:
        server.stop(0).wait(5)
    key = IdentityFiles.in_data_dir(tmp_path).load_key()
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    (sent,) = seen
    assert scalar not in sent and IdentityFiles.in_data_dir(tmp_path).key.read_bytes() not in sent
    request = pb.EnrollRequest.FromString(sent)
    csr = x509.load_der_x509_csr(request.csr_der)
    assert csr.public_key() == key.public_key()


# --- renewing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("elapsed", "due"), [(0.0, False), (0.5, False), (0.66, False), (0.67, True), (1.5, True)]
)
def test_renew_due_at_two_thirds_of_the_lifetime(elapsed: float, due: bool) -> None:
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    end = start + dt.timedelta(days=30)
    assert renew_due(start, end, start + (end - start) * elapsed) is due


def test_the_agent_renews_before_expiry_without_an_operator(
    ctl: support.Running, clock: Clock, tmp_path: Path
) -> None:
    assert agent_enroll(ctl, token_for(ctl, "cam-5"), tmp_path).exit_code == 0
    files = IdentityFiles.in_data_dir(tmp_path)
    first = files.identity()
    renewed: list[int] = []
    renewer = Renewer(ctl.address, files=files, clock=clock, on_renewed=lambda: renewed.append(1))
    assert renewer.check() > 0 and not renewed  # a fresh certificate: nothing to do
    clock.advance(0.5 * HOUR)
    renewer.check()
    assert not renewed
    clock.advance(0.25 * HOUR)  # past 2/3
    renewer.check()
    assert renewed == [1]
    second = files.identity()
    assert second.serial != first.serial and second.device_id == "cam-5"
    assert second.not_after > first.not_after
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    assert cert.public_key() == files.load_key().public_key()  # a new key came with it
    renewer.check()  # the new certificate is fresh again
    assert renewed == [1]


def test_renewal_needs_a_valid_unrevoked_certificate_and_its_key(
    ctl: support.Running, clock: Clock, tmp_path: Path
) -> None:
    assert agent_enroll(ctl, token_for(ctl, "cam-6"), tmp_path).exit_code == 0
    files = IdentityFiles.in_data_dir(tmp_path)
    cert_pem = files.cert.read_bytes()
    new_key = identities.make_key()
    csr = identities.make_csr(new_key)
    for stub in enroll_stub(ctl):
        # Someone with the certificate (it is public) but not the key cannot renew it.
        stolen = pb.RenewRequest(
            csr_der=csr, certificate_pem=cert_pem, proof=identities.renewal_proof(new_key, csr)
        )
        assert code_of(lambda: stub.Renew(stolen, timeout=10)) == grpc.StatusCode.UNAUTHENTICATED
    revoked = CliRunner().invoke(
        edgectl, ["-c", ctl.api, "device", "revoke", "cam-6"], env={"EDGECTL_TOKEN": ctl.token}
    )
    assert revoked.exit_code == 0, revoked.output
    with pytest.raises(EdgeFleetError, match="revoked"):
        renew(ctl.address, files=files)
    crl = x509.load_pem_x509_crl(ctl.controller.settings.ca_dir.joinpath("crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(files.identity().serial) is not None


def test_an_expired_certificate_cannot_be_renewed(
    ctl: support.Running, clock: Clock, tmp_path: Path
) -> None:
    assert agent_enroll(ctl, token_for(ctl, "cam-7"), tmp_path).exit_code == 0
    files = IdentityFiles.in_data_dir(tmp_path)
    clock.advance(2 * HOUR)
    renewer = Renewer(ctl.address, files=files, clock=clock)
    renewer.check()
    assert "expired" in renewer.last_error and "re-enroll" in renewer.last_error
    with pytest.raises(EdgeFleetError, match="not valid now"):
        renew(ctl.address, files=files)  # the controller refuses it too


def test_a_running_agent_renews_in_the_background(broker: Broker, tmp_path: Path) -> None:
    """The daemon's wiring, on the real clock: a 6 s certificate is renewed after ~4 s."""
    s = support.settings(tmp_path / "controller", broker.url)
    ctl = support.start(replace(s, pki=PkiSettings(cert_lifetime_s=6.0)))
    agent: Agent | None = None
    try:
        assert agent_enroll(ctl, token_for(ctl, "cam-8"), tmp_path / "agent").exit_code == 0
        files = IdentityFiles.in_data_dir(tmp_path / "agent")
        first = files.identity().serial
        agent = Agent(agent_settings(broker.url, "cam-8", tmp_path / "agent", ctl.address))
        agent.start()
        renewer = agent.renewer
        assert renewer is not None
        wait_for("a renewed certificate", lambda: renewer.renewals >= 1, timeout=30)
        assert files.identity().serial != first
    finally:
        if agent is not None:
            agent.stop()
        ctl.stop()


# --- offline across expiry ------------------------------------------------------------------


def agent_settings(
    broker_url: str, device: str, data_dir: Path, controller: str, **more: Any
) -> agent_config.AgentSettings:
    signer_key = data_dir.parent / "trusted.pem"
    if not signer_key.exists():
        Signer(data_dir.parent)  # writes trusted.pem
    values: dict[str, Any] = {
        "device_id": device,
        "fleet": "lab",
        "mqtt": broker_url,
        "controller": controller,
        "data_dir": data_dir,
        "predict_listen": "127.0.0.1:0",
        "metrics_port": -1,
        "trusted_keys": (signer_key,),
        "telemetry_interval": 5.0,
        "insecure": True,  # the controller here is plaintext (tests/security/test_grpc_mtls.py)
        **more,
    }
    return agent_config.merge(values)


def tree(root: Path, *, skip: str) -> dict[str, str]:
    """sha256 of every file under ``root`` except those under ``skip``."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).parts[0] != skip
    }


def test_offline_across_expiry_reenrolls_and_keeps_its_model(
    ctl: support.Running,
    clock: Clock,
    broker: Broker,
    tmp_path: Path,
    digits_model: Any,
) -> None:
    device, data = "cam-9", tmp_path / "cam-9"
    assert agent_enroll(ctl, token_for(ctl, device), data).exit_code == 0
    files = IdentityFiles.in_data_dir(data)
    old = files.identity()
    signer = Signer(tmp_path)
    artifacts = ArtifactServer(tmp_path / "blobs")
    watcher = Watcher(broker.url, device_id=device)
    settings = agent_settings(
        broker.url, device, data, artifacts.address, trusted_keys=(signer.key_file,)
    )
    agent = Agent(settings)
    try:
        agent.start()
        install(watcher, signer, artifacts, digits_model.onnx_bytes, version="1.0.0", generation=1)
        agent.stop()
        # Away for longer than the certificate lives: it cannot be renewed any more.
        clock.advance(3 * HOUR)
        with pytest.raises(EdgeFleetError, match="not valid now"):
            renew(ctl.address, files=files)
        before = tree(data, skip="identity")
        assert any(name.startswith("slots") or "slot" in name for name in before), before
        # The operator hands out a new token; the device enrolls again.
        result = agent_enroll(ctl, token_for(ctl, device), data)
        assert result.exit_code == 0, result.output
        assert tree(data, skip="identity") == before  # not one byte outside identity/
        new = files.identity()
        assert new.serial != old.serial and new.not_after > old.not_after
        # Back up, it serves the model it had, without fetching it again.
        fetched = len(artifacts.fetches)
        agent = Agent(settings)
        agent.start()
        wait_for(
            "the old model active again",
            lambda: (rt := agent.predictor.current) is not None and rt.release.endswith("1.0.0"),
        )
        assert len(artifacts.fetches) == fetched
    finally:
        agent.stop()
        watcher.close()
        artifacts.stop()


# --- opted in end to end: mTLS broker -------------------------------------------------------


def test_enrolled_agent_and_controller_meet_on_an_mtls_broker(tmp_path: Path, clock: Clock) -> None:
    """broker-config, a Mosquitto on its config, the controller with its client certificate
    keeping the broker's ACL and CRL current (--broker-dir), an agent with the identity it
    enrolled for: the agent's status reaches the controller; once revoked, the restarted
    broker refuses the device's certificate at the handshake."""
    if not mosquitto_available():
        pytest.skip("mosquitto is not installed")
    data = tmp_path / "controller"
    broker = Broker(tmp_path)
    out = tmp_path / "broker"
    mqtts = f"mqtts://127.0.0.1:{broker.port}"
    s = support.settings(data, mqtts)
    s = replace(
        s,
        mqtt=MqttSettings(
            url=mqtts,
            client_id="edgefleet-controller",
            ca_file=str(out / "ca.pem"),
            cert_file=str(data / "ca" / "controller.crt"),
            key_file=str(data / "ca" / "controller.key"),
        ),
        pki=PkiSettings(broker_dir=out),
    )

    def configure() -> None:
        result = CliRunner().invoke(
            controller_cli,
            [
                *("broker-config", "--data-dir", str(data), "--out", str(out)),
                *("--host", "127.0.0.1", "--port", str(broker.port), "--bind", "127.0.0.1"),
            ],
        )
        assert result.exit_code == 0, result.output
        conf = (out / "mosquitto.conf").read_text()
        broker.conf.write_text(
            "persistence false\n" + ("user root\n" if os.geteuid() == 0 else "") + conf
        )

    configure()  # makes the CA and the controller's certificate before it starts
    broker.start()
    ctl = support.start(s, clock=clock)
    agent: Agent | None = None
    try:
        assert agent_enroll(ctl, token_for(ctl, "cam-10"), tmp_path / "agent").exit_code == 0
        assert "user cam-10" in (out / "edgefleet.acl").read_text()  # the controller wrote it
        assert broker.proc is not None
        broker.proc.send_signal(signal.SIGHUP)  # Mosquitto rereads the ACL
        agent = Agent(agent_settings(mqtts, "cam-10", tmp_path / "agent", ctl.address))
        agent.start()
        support.eventually(
            lambda: any(d.device_id == "cam-10" for d in support.all_devices(ctl.stub)),
            timeout=20,
            what="cam-10's status at the controller over mTLS",
        )
        identity = IdentityFiles.in_data_dir(tmp_path / "agent")
        assert handshake(broker.port, out / "ca.pem", identity.cert, identity.key)
        edgectl_ok(ctl, "device", "revoke", "cam-10")
        assert "user cam-10" not in (out / "edgefleet.acl").read_text()
        broker.stop()
        broker.start()  # Mosquitto reads the CRL at start
        assert not handshake(broker.port, out / "ca.pem", identity.cert, identity.key)
        ctl_cert = data / "ca" / "controller.crt", data / "ca" / "controller.key"
        assert handshake(broker.port, out / "ca.pem", *ctl_cert)
    finally:
        if agent is not None:
            agent.stop()
        ctl.stop()
        broker.kill()


def handshake(port: int, ca: Path, cert: Path, key: Path) -> bool:
    """Whether the broker completes a TLS 1.2 handshake with this client certificate."""
    context = ssl.create_default_context(cafile=str(ca))
    context.maximum_version = ssl.TLSVersion.TLSv1_2  # the verdict comes inside the handshake
    context.load_cert_chain(str(cert), str(key))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="127.0.0.1"):
                return True
        except ssl.SSLError:
            return False


# --- registry: rollouts, remove, re-enroll --------------------------------------------------


def edgectl_ok(ctl: support.Running, *args: str) -> str:
    result = CliRunner().invoke(edgectl, ["-c", ctl.api, *args], env={"EDGECTL_TOKEN": ctl.token})
    assert result.exit_code == 0, result.output
    return result.stdout


def test_rollouts_skip_quarantined_and_revoked_devices(
    ctl: support.Running, broker: Broker, digits_model: Any
) -> None:
    support.releases(ctl.stub, digits_model.onnx_bytes, "1.1.0")
    agents = support.Agents(broker.url)
    try:
        fleet, devices = agents.fleet(ctl, 4)
        for d in devices:
            token_for(ctl, d.device_id, fleet=fleet)
        edgectl_ok(ctl, "device", "quarantine", devices[1].device_id)
        edgectl_ok(ctl, "device", "revoke", devices[2].device_id)
        edgectl_ok(ctl, "device", "quarantine", devices[3].device_id)
        edgectl_ok(ctl, "device", "quarantine", devices[3].device_id, "--lift")
        answer = ctl.stub.Deploy(
            controller_pb2.DeployRequest(release=support.NEW, fleet=fleet), timeout=10
        )
        info = support.wait_phase(ctl.stub, answer.rollout_id, "succeeded")
        assert set(support.device_states(info)) == {devices[0].device_id, devices[3].device_id}
        registry = ctl.controller.enrollment
        assert registry is not None
        states = {d.device_id: d.state for d in registry.list_identities(fleet)}
        assert states == {
            devices[0].device_id: "enrolled",
            devices[1].device_id: "quarantined",
            devices[2].device_id: "revoked",
            devices[3].device_id: "enrolled",
        }
    finally:
        agents.close()


def test_remove_forgets_the_device_and_a_move_needs_it(
    ctl: support.Running, broker: Broker, tmp_path: Path
) -> None:
    device = support.Device(broker.url)
    try:
        device.status("cam-11", "lab")
        support.eventually(
            lambda: any(
                d.device_id == "cam-11"
                for d in ctl.stub.ListDevices(controller_pb2.ListDevicesRequest()).devices
            ),
            what="cam-11 registered by its status",
        )
        assert agent_enroll(ctl, token_for(ctl, "cam-11"), tmp_path).exit_code == 0
        moved = CliRunner().invoke(
            edgectl,
            ["-c", ctl.api, "device", "enroll", "cam-11", "--fleet", "elsewhere"],
            env={"EDGECTL_TOKEN": ctl.token},
        )
        assert moved.exit_code == 1 and "remove" in moved.output
        serial = IdentityFiles.in_data_dir(tmp_path).identity().serial
        assert '"state": "removed"' in edgectl_ok(ctl, "device", "remove", "cam-11", "--json")
        listed = ctl.stub.ListDevices(controller_pb2.ListDevicesRequest()).devices
        assert "cam-11" not in {d.device_id for d in listed}
        assert "cam-11" not in edgectl_ok(ctl, "device", "list")
        crl = x509.load_pem_x509_crl((ctl.controller.settings.ca_dir / "crl.pem").read_bytes())
        assert crl.get_revoked_certificate_by_serial_number(serial) is not None
        token_for(ctl, "cam-11", fleet="elsewhere")  # now it may go to another fleet
    finally:
        device.close()


def test_enrolling_again_revokes_the_certificates_before(
    ctl: support.Running, tmp_path: Path
) -> None:
    """A factory reset (or a stolen old key): the new enrollment supersedes the old identity."""
    assert agent_enroll(ctl, token_for(ctl, "cam-12"), tmp_path / "a").exit_code == 0
    old = IdentityFiles.in_data_dir(tmp_path / "a")
    assert agent_enroll(ctl, token_for(ctl, "cam-12"), tmp_path / "b").exit_code == 0
    crl = x509.load_pem_x509_crl((ctl.controller.settings.ca_dir / "crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(old.identity().serial) is not None
    with pytest.raises(EdgeFleetError, match="revoked"):
        renew(ctl.address, files=old)
    renew(ctl.address, files=IdentityFiles.in_data_dir(tmp_path / "b"))  # the new one renews


# --- bring your own CA ----------------------------------------------------------------------


def _ca_cert(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = issuer or (subject, key)
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(
            x509.BasicConstraints(ca=True, path_length=None if issuer is None else 0), critical=True
        )
        .sign(issuer_key, hashes.SHA256())
    )


def test_bring_your_own_ca_an_intermediate_with_its_chain(tmp_path: Path, broker: Broker) -> None:
    root_key, mid_key = identities.make_key(), identities.make_key()
    root = _ca_cert("Example Root", root_key, None)
    mid = _ca_cert("Example Fleet CA", mid_key, (root.subject, root_key))
    pem = serialization.Encoding.PEM
    (tmp_path / "ca.pem").write_bytes(mid.public_bytes(pem) + root.public_bytes(pem))
    (tmp_path / "ca.key").write_bytes(identities.key_pem(mid_key))
    (tmp_path / "ca.key").chmod(0o600)
    s = support.settings(tmp_path / "controller", broker.url)
    s = replace(s, pki=PkiSettings(ca_cert=tmp_path / "ca.pem", ca_key=tmp_path / "ca.key"))
    ctl = support.start(s)
    try:
        assert agent_enroll(ctl, token_for(ctl, "cam-13"), tmp_path / "agent").exit_code == 0
        files = IdentityFiles.in_data_dir(tmp_path / "agent")
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
        cert.verify_directly_issued_by(mid)
        assert files.ca.read_bytes() == (tmp_path / "ca.pem").read_bytes()  # the whole chain
        assert not (ctl.controller.settings.ca_dir / "ca.key").exists()  # used in place
    finally:
        ctl.stop()
    # A key that is not the certificate's is refused at start.
    (tmp_path / "ca.key").write_bytes(identities.key_pem(root_key))
    with pytest.raises(EdgeFleetError, match="not the key"):
        support.start(s)


# --- identity files -------------------------------------------------------------------------


def test_an_interrupted_certificate_update_is_finished_or_undone(tmp_path: Path) -> None:
    files = IdentityFiles(tmp_path / "identity")
    ca = CertificateAuthorityForTests(tmp_path / "ca")
    key1, key2 = identities.make_key(), identities.make_key()
    files.save(key1, ca.cert_for(key1), ca.pem)
    # Cut after the key moved, before the certificate did: the new pair is completed.
    cert2 = ca.cert_for(key2)
    files.save(key2, cert2, ca.pem)
    os.replace(files.cert, files.cert.with_name("device.crt.next"))
    files.cert.write_bytes(ca.cert_for(key1))  # the old certificate still in place
    assert files.exists()
    assert files.cert.read_bytes() == cert2
    assert files.load_key().public_key() == key2.public_key()
    # Cut before anything moved: the *.next files go, the pair in place stands.
    (tmp_path / "identity" / "device.key.next").write_bytes(identities.key_pem(key1))
    (tmp_path / "identity" / "device.crt.next").write_bytes(ca.cert_for(key1))
    assert files.exists()
    assert files.cert.read_bytes() == cert2
    assert sorted(p.name for p in files.directory.iterdir()) == [
        "ca.pem",
        "device.crt",
        "device.key",
    ]


class CertificateAuthorityForTests:
    def __init__(self, directory: Path) -> None:
        from edgefleet.controller.pki import CertificateAuthority

        self.ca = CertificateAuthority.open(directory, now=dt.datetime.now(dt.UTC))
        self.pem = self.ca.bundle_pem

    def cert_for(self, key: ec.EllipticCurvePrivateKey) -> bytes:
        return self.ca.issue_device(
            identities.make_csr(key),
            device_id="d",
            fleet="f",
            lifetime=dt.timedelta(days=1),
            now=dt.datetime.now(dt.UTC),
        ).pem


def test_renew_over_mtls_takes_the_handshake_certificate(
    ctl: support.Running, tmp_path: Path
) -> None:
    """When the device listener runs TLS with client certificates, Renew needs no proof: the
    handshake showed the key; naming another certificate in the request is refused."""
    registry = ctl.controller.enrollment
    assert registry is not None
    assert agent_enroll(ctl, token_for(ctl, "cam-14"), tmp_path / "a").exit_code == 0
    assert agent_enroll(ctl, token_for(ctl, "cam-15"), tmp_path / "b").exit_code == 0
    mine, other = (
        IdentityFiles.in_data_dir(tmp_path / "a"),
        IdentityFiles.in_data_dir(tmp_path / "b"),
    )
    tls = registry.ca.issue_server(
        ["localhost"], lifetime=dt.timedelta(days=1), now=dt.datetime.now(dt.UTC)
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    enroll_pb2_grpc.add_EnrollmentServiceServicer_to_server(EnrollmentServicer(registry), server)
    port = server.add_secure_port(
        "127.0.0.1:0",
        grpc.ssl_server_credentials(
            [(tls.key_pem, tls.cert_pem)],
            root_certificates=registry.ca.bundle_pem,
            require_client_auth=True,
        ),
    )
    server.start()
    channel = grpc.secure_channel(
        f"127.0.0.1:{port}",
        grpc.ssl_channel_credentials(
            root_certificates=mine.ca.read_bytes(),
            private_key=mine.key.read_bytes(),
            certificate_chain=mine.cert.read_bytes(),
        ),
        options=[("grpc.ssl_target_name_override", "localhost")],
    )
    try:
        stub = enroll_pb2_grpc.EnrollmentServiceStub(channel)
        csr = identities.make_csr(identities.make_key())
        reply = stub.Renew(pb.RenewRequest(csr_der=csr), timeout=10)
        assert (
            identities.identity_of(x509.load_pem_x509_certificate(reply.certificate_pem)).device_id
            == "cam-14"
        )
        not_mine = pb.RenewRequest(csr_der=csr, certificate_pem=other.cert.read_bytes())
        assert code_of(lambda: stub.Renew(not_mine, timeout=10)) == grpc.StatusCode.UNAUTHENTICATED
    finally:
        channel.close()
        server.stop(0).wait(5)


def test_the_controller_no_longer_hears_a_revoked_device(
    ctl: support.Running, broker: Broker
) -> None:
    """Even on a plain broker (no CRL in the way), a revoked device's reports are dropped."""
    device = support.Device(broker.url)

    def last_error(device_id: str) -> str | None:
        for d in ctl.stub.ListDevices(controller_pb2.ListDevicesRequest(), timeout=10).devices:
            if d.device_id == device_id:
                return d.last_error or "-"
        return None

    try:
        token_for(ctl, "cam-16")
        device.status("cam-16", "lab", last_error="before")
        support.eventually(lambda: last_error("cam-16") == "before", what="cam-16 heard")
        edgectl_ok(ctl, "device", "revoke", "cam-16")
        # Revoked first, a witness last, on one connection: once the witness is stored, the
        # revoked device's report was handled before it.
        device.status("cam-16", "lab", last_error="after")
        device.status("cam-17", "lab", last_error="witness")
        support.eventually(lambda: last_error("cam-17") == "witness", what="the witness")
        assert last_error("cam-16") == "before"
    finally:
        device.close()


def test_operators_need_the_role_and_the_fleet(ctl: support.Running) -> None:
    """Enrolling and quarantining are a deployer's, in its own fleets; revoking and removing
    an admin's; without a token nothing."""
    made = ctl.stub.AddOperator(
        controller_pb2.AddOperatorRequest(name="lab-deployer", role="deployer", fleets=["lab"]),
        timeout=10,
    )
    env = {"EDGECTL_TOKEN": made.token}

    def run(*args: str, token: dict[str, str] = env) -> Any:
        return CliRunner().invoke(edgectl, ["-c", ctl.api, "device", *args], env=token)

    assert run("enroll", "cam-18", "--fleet", "lab").exit_code == 0
    assert run("quarantine", "cam-18").exit_code == 0
    elsewhere = run("enroll", "cam-19", "--fleet", "other")
    assert elsewhere.exit_code != 0 and "limited to fleets lab" in elsewhere.output
    revoke = run("revoke", "cam-18")
    assert revoke.exit_code != 0 and "needs role admin" in revoke.output
    anonymous = run("enroll", "cam-20", "--fleet", "lab", token={"EDGECTL_TOKEN": "x"})
    assert anonymous.exit_code != 0 and "invalid operator token" in anonymous.output
    assert "cam-20" not in edgectl_ok(ctl, "device", "list")


def test_an_enrolled_agent_takes_its_id_and_fleet_from_its_certificate(
    ctl: support.Running, tmp_path: Path
) -> None:
    data = tmp_path / "agent"
    assert agent_enroll(ctl, token_for(ctl, "cam-21", fleet="factory-b"), data).exit_code == 0
    Signer(tmp_path)
    base = {"data_dir": data, "trusted_keys": (tmp_path / "trusted.pem",)}
    settings = agent_config.merge(base)
    assert (settings.device.device_id, settings.device.fleet) == ("cam-21", "factory-b")
    for wrong in ({"fleet": "factory-a"}, {"device_id": "cam-22"}):
        with pytest.raises(EdgeFleetError, match="disagrees with this device's certificate"):
            agent_config.merge(base, wrong)
