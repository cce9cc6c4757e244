"""The end-to-end fleet really is mTLS on every hop (issue 8), against its real processes.

The broker is an ``mqtts://`` Mosquitto that refuses a TLS client without a certificate and a
plaintext one, and talks MQTT to an enrolled device's identity; no agent nor the controller
runs with ``--insecure`` (read from ``/proc/PID/cmdline``, what the process was really given);
the controller's devices' port refuses a plaintext gRPC channel and one of TLS without a client
certificate, and answers an enrolled device; every device lists its mTLS peer listener, which
refuses ``edgectl predict`` on plaintext. Reverting the fixture to ``--insecure`` fails each.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import grpc
import pytest

from edgefleet.agent.identity import IdentityFiles
from edgefleet.common import rpc
from edgefleet.demo.processes import Managed
from edgefleet.v1 import artifact_pb2, artifact_pb2_grpc
from tests.e2e.conftest import Fleet

pytestmark = pytest.mark.e2e

NO_DIGEST = "sha256:" + "0" * 64
CONNACK_ACCEPTED = b"\x20\x02\x00\x00"


def mqtt_connect(client_id: str) -> bytes:
    """An MQTT 3.1.1 CONNECT packet (clean session, keepalive 60 s)."""
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(cid).to_bytes(2, "big") + cid
    return b"\x10" + bytes([len(body)]) + body


def broker_answer(
    port: int, *, ca: Path | None, identity: IdentityFiles | None, client_id: str
) -> bytes:
    """What the broker sends back to a CONNECT: over TLS trusting ``ca`` (with ``identity``'s
    certificate if given), or on plaintext TCP when ``ca`` is None; b"" when it hangs up."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn = raw
    try:
        if ca is not None:
            context = ssl.create_default_context(cafile=str(ca))
            if identity is not None:
                context.load_cert_chain(str(identity.cert), str(identity.key))
            conn = context.wrap_socket(raw, server_hostname="127.0.0.1")
        conn.sendall(mqtt_connect(client_id))
        return conn.recv(4)
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return b""
    finally:
        conn.close()
        raw.close()


def cmdline(process: Managed) -> list[bytes]:
    return Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0")


def stat_code(target: str, tls: rpc.ClientTls | None) -> grpc.StatusCode:
    with rpc.channel(target, tls=tls) as channel:
        stub = artifact_pb2_grpc.ArtifactServiceStub(channel)
        try:
            stub.Stat(artifact_pb2.StatRequest(digest=NO_DIGEST), timeout=10)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def test_the_broker_is_mtls_only(fleet: Fleet) -> None:
    broker = fleet.stack.broker
    assert broker.url.startswith("mqtts://127.0.0.1:"), broker.url
    port = int(broker.url.rsplit(":", 1)[1])
    ca = fleet.stack.mtls.broker_dir / "ca.pem"
    device = fleet.agents[0]
    identity = IdentityFiles.in_data_dir(device.data_dir)
    assert identity.exists(), "the agent was never enrolled"
    # an enrolled device's identity: the broker takes it (the positive control)
    took = broker_answer(port, ca=ca, identity=identity, client_id=device.device_id)
    assert took == CONNACK_ACCEPTED
    # TLS without a client certificate, and plaintext MQTT: no CONNACK, hung up
    assert broker_answer(port, ca=ca, identity=None, client_id="anonymous") == b""
    assert broker_answer(port, ca=None, identity=None, client_id="anonymous") == b""


def test_no_process_runs_insecure(fleet: Fleet) -> None:
    agents = {a.device_id: a for a in fleet.agents}
    assert sorted(agents) == fleet.device_ids
    for agent in agents.values():
        argv = cmdline(agent.process)
        assert b"run" in argv and b"--insecure" not in argv, argv
        assert fleet.stack.broker.url.encode() in argv, argv
        assert agent.peer_endpoint and agent.peer_endpoint != agent.predict_endpoint
    argv = cmdline(fleet.controller.process)
    assert b"--tls" in argv and b"--insecure" not in argv, argv
    assert not [a for a in argv if a.startswith(b"--insecure")], argv
    assert fleet.controller.enroll and fleet.controller.api_ca is not None


def test_the_devices_port_is_mtls(fleet: Fleet) -> None:
    address = fleet.controller.address
    identity = IdentityFiles.in_data_dir(fleet.agents[0].data_dir)
    ca = identity.ca.read_bytes()
    assert stat_code(address, identity.client_tls()) == grpc.StatusCode.NOT_FOUND
    assert stat_code(address, None) == grpc.StatusCode.UNAVAILABLE  # plaintext
    assert stat_code(address, rpc.ClientTls(ca)) == grpc.StatusCode.UNAVAILABLE  # no cert


def test_devices_list_their_mtls_peer_listener(fleet: Fleet, tmp_path: Path) -> None:
    """The endpoint a device lists is its peer listener (mTLS, for its fleet's neighbours):
    ``edgectl predict`` on plaintext is refused there, in one line."""
    import numpy as np

    listed = {d["device_id"]: d["predict_endpoint"] for d in fleet.devices()}
    assert listed == {a.device_id: a.peer_endpoint for a in fleet.agents}
    npz = tmp_path / "x.npz"
    np.savez(npz, pixels=np.zeros((1, 64), np.float32))
    result = fleet.cli.run("predict", "--device", fleet.device_ids[0], "--input", npz)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach device"), result.stderr
