"""Attack: oversize requests on every RPC port the controller serves, against a real controller
(in-process, ``--tls``: real gRPC servers with TLS, a device enrolled for real).

Every port bounds a message before any handler or authentication runs (``RESOURCE_EXHAUSTED``):
the devices' mTLS port at 64 MiB, the enrollment listener at 1 MiB, the operator API at
``ApiSettings.max_message_bytes`` (1 MiB here, 64 MiB by default). Under those, enrollment and
renewal bound their fields (``INVALID_ARGUMENT``, ``request too large``), and a blob fetch
asking for huge chunks gets chunks of at most ``MAX_CHUNK``. The clients here send whatever
they are given (no client-side limit), so each refusal is the server's. An enrolled agent's
mTLS peer listener (Predict for neighbours, blobs for the fleet) bounds a message at
``predict_max_bytes`` as its local Predict port does (that one and the concurrency bound:
``tests/security/test_limits.py``); the broker's bound, on every topic:
``tests/security/test_broker_mtls.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from edgefleet.agent.daemon import Agent
from edgefleet.agent.identity import IdentityFiles
from edgefleet.common import rpc, wire
from edgefleet.common.artifacts import MAX_CHUNK, BlobStore
from edgefleet.controller.identityservice import MAX_CSR_BYTES
from edgefleet.edgectl.keys import trusted_pem
from edgefleet.v1 import (
    artifact_pb2,
    artifact_pb2_grpc,
    controller_pb2_grpc,
    enroll_pb2,
    enroll_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
)
from edgefleet.v1 import controller_pb2 as pb
from tests.conftest import Broker
from tests.controller import support
from tests.security.test_grpc_mtls import DEADLINE, agent_settings, enroll, tls_settings

API_LIMIT = 1 << 20
UNLIMITED = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


@pytest.fixture
def ctl(tmp_path: Path, broker: Broker) -> Iterator[support.Running]:
    s = tls_settings(tmp_path / "ctl", broker)
    s = dataclasses.replace(s, api=dataclasses.replace(s.api, max_message_bytes=API_LIMIT))
    running = support.start(s)
    yield running
    running.stop()


def unlimited(target: str, tls: rpc.ClientTls) -> grpc.Channel:
    """A TLS channel that sends and takes messages of any size (``rpc.channel``'s: 64 MiB)."""
    name = [("grpc.ssl_target_name_override", tls.server_name)] if tls.server_name else []
    return grpc.secure_channel(target, tls.credentials(), options=[*UNLIMITED, *name])


def code_of(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def ca_tls(ctl: support.Running) -> rpc.ClientTls:
    assert ctl.controller.enrollment is not None
    return rpc.ClientTls(ca_pem=ctl.controller.enrollment.ca.bundle_pem)


def test_the_enrollment_listener_bounds_messages_csrs_and_tokens(ctl: support.Running) -> None:
    csr_ok, token_ok = b"x" * 100, "ef1.nope"
    with unlimited(ctl.controller.enroll_address, ca_tls(ctl)) as channel:
        stub = enroll_pb2_grpc.EnrollmentServiceStub(channel)

        def call(csr: bytes, token: str) -> tuple[grpc.StatusCode, str]:
            request = enroll_pb2.EnrollRequest(token=token, csr_der=csr)
            return code_of(lambda: stub.Enroll(request, timeout=DEADLINE))

        huge = call(b"x" * (2 << 20), token_ok)
        long_csr = call(b"x" * (MAX_CSR_BYTES + 1), token_ok)
        long_token = call(csr_ok, "t" * 257)
        control = call(csr_ok, token_ok)

    assert huge[0] is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in huge[1]
    assert long_csr == (grpc.StatusCode.INVALID_ARGUMENT, "request too large")
    assert long_token == (grpc.StatusCode.INVALID_ARGUMENT, "request too large")
    assert control[0] is grpc.StatusCode.UNAUTHENTICATED  # the size was fine, the token not


def test_the_devices_port_bounds_messages_renewals_and_chunks(
    ctl: support.Running, tmp_path: Path
) -> None:
    data = tmp_path / "cam-50"
    assert enroll(ctl, "cam-50", data).exit_code == 0
    mtls = IdentityFiles.in_data_dir(data).client_tls()
    blob = b"b" * (MAX_CHUNK + 1000)
    digest = BlobStore(ctl.controller.settings.blobs_dir).put(blob)
    with unlimited(ctl.address, mtls) as channel:
        artifacts = artifact_pb2_grpc.ArtifactServiceStub(channel)
        renewals = enroll_pb2_grpc.EnrollmentServiceStub(channel)
        huge = code_of(
            lambda: artifacts.Stat(
                artifact_pb2.StatRequest(digest="x" * ((64 << 20) + 1)), timeout=60
            )
        )
        long_renewal = code_of(
            lambda: renewals.Renew(
                enroll_pb2.RenewRequest(csr_der=b"x" * (MAX_CSR_BYTES + 1)), timeout=DEADLINE
            )
        )
        chunks = list(
            artifacts.Fetch(
                artifact_pb2.FetchRequest(digest=digest, chunk_size=2**31 - 1), timeout=DEADLINE
            )
        )
        control = code_of(
            lambda: artifacts.Stat(artifact_pb2.StatRequest(digest=digest), timeout=DEADLINE)
        )

    assert huge[0] is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in huge[1]
    assert long_renewal == (grpc.StatusCode.INVALID_ARGUMENT, "request too large")
    assert [len(c.data) for c in chunks] == [MAX_CHUNK, 1000]
    assert b"".join(c.data for c in chunks) == blob
    assert control[0] is grpc.StatusCode.OK


def test_the_operator_api_bounds_messages_before_authentication(ctl: support.Running) -> None:
    api_tls = support.api_tls(ctl.controller)
    assert api_tls is not None
    over = pb.ListDevicesRequest(fleet="f" * (API_LIMIT + 1))
    under = pb.ListDevicesRequest(fleet="f" * (API_LIMIT // 2))
    with unlimited(ctl.api, api_tls) as channel:
        anonymous = controller_pb2_grpc.ControllerServiceStub(channel)
        unauthenticated = code_of(lambda: anonymous.ListDevices(over, timeout=DEADLINE))
    admin = ctl.stub  # with the admin token (its channel's own limit is 64 MiB)
    with_token = code_of(lambda: admin.ListDevices(over, timeout=DEADLINE))
    fits = code_of(lambda: admin.ListDevices(under, timeout=DEADLINE))

    assert unauthenticated[0] is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in unauthenticated[1]
    assert with_token[0] is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in with_token[1]
    assert fits[0] is not grpc.StatusCode.RESOURCE_EXHAUSTED, fits


def test_an_enrolled_agents_peer_listener_bounds_messages(
    ctl: support.Running, broker: Broker, tmp_path: Path
) -> None:
    fleet = support.unique("fleet")
    serving_id, caller_id = f"{fleet}-serving", f"{fleet}-caller"
    for device in (serving_id, caller_id):
        assert enroll(ctl, device, tmp_path / device, fleet=fleet).exit_code == 0
    ctl.stub.InitKey(pb.InitKeyRequest(), timeout=DEADLINE)
    key_file = tmp_path / "trusted.pem"
    key_file.write_text(trusted_pem(list(ctl.stub.ListKeys(pb.ListKeysRequest()).keys)))
    settings = agent_settings(
        ctl, broker, tmp_path / serving_id, key_file, predict_max_bytes=1 << 20
    )
    agent = Agent(settings)
    try:
        agent.start()
        assert agent.tls and agent.peer_endpoint
        caller = IdentityFiles.in_data_dir(tmp_path / caller_id).client_tls(server_name=serving_id)

        def predict(rows: int) -> tuple[grpc.StatusCode, str]:
            x = np.zeros((rows, 64), np.float32)
            request = inference_pb2.PredictRequest(inputs=[wire.array_to_pb("pixels", x)])
            with unlimited(agent.peer_endpoint, caller) as channel:
                stub = inference_pb2_grpc.InferenceServiceStub(channel)
                return code_of(lambda: stub.Predict(request, timeout=DEADLINE))

        huge, fits = predict(8192), predict(1)  # 2 MiB; 256 bytes
    finally:
        agent.stop()

    assert huge[0] is grpc.StatusCode.RESOURCE_EXHAUSTED, (huge, fits)
    assert "larger than max" in huge[1]
    assert fits[0] is not grpc.StatusCode.RESOURCE_EXHAUSTED, fits  # no model, or no roster
