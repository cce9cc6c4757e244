"""A lying peer, with real ``edge-agent`` processes: two enrolled agents of one fleet (mTLS to the
controller and to each other, their real peer listeners, ONNX Runtime), a real controller with
mTLS and enrollment, a real Mosquitto. The first agent installs the release from the controller
and then serves flipped bytes to peers (``lying_agent.py``: the real agent with its peer
listener's Fetch made to lie). The second is told that peer first, the controller last: it
catches the bad bytes by the signed digest, skips the peer, and installs from the controller.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from edgefleet.agent.identity import IdentityFiles
from edgefleet.common import digests, peers
from edgefleet.common.artifacts import BlobStore
from edgefleet.demo import digits
from edgefleet.edgectl.keys import trusted_pem
from edgefleet.v1 import controller_pb2 as pb
from tests.agent.helpers import AgentProcess, wait_for
from tests.conftest import Broker
from tests.controller import support
from tests.security.test_grpc_mtls import enroll, stat_code, tls_settings
from tests.security.test_peer_fetch import egress

DEADLINE = 60.0  # generous: under a loaded machine's scheduling an upload may take a while
LYING_AGENT = Path(__file__).with_name("lying_agent.py")

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture
def ctl(tmp_path: Path, broker: Broker) -> Iterator[support.Running]:
    running = support.start(tls_settings(tmp_path / "ctl", broker))
    yield running
    running.stop()


def agent_process(
    ctl: support.Running, broker: Broker, tmp_path: Path, device_id: str, fleet: str
) -> AgentProcess:
    """An enrolled agent (its identity in its data dir) on the session's plaintext broker."""
    data = tmp_path / device_id
    result = enroll(ctl, device_id, data, fleet=fleet)
    assert result.exit_code == 0, result.output
    agent = AgentProcess(
        device_id=device_id,
        data_dir=data,
        broker_url=broker.url,
        controller=ctl.address,
        key_file=tmp_path / "trusted.pem",
        fleet=fleet,
        insecure=False,
    )
    agent.args.append("--insecure-mqtt")
    return agent


def release_of(ctl: support.Running, model: bytes) -> str:
    """The model uploaded and released as ``<unique name>:1.0.0``."""
    name = support.unique("digits")

    def parts() -> Iterator[pb.UploadModelRequest]:
        yield pb.UploadModelRequest(header=pb.UploadHeader(name=name, size=len(model)))
        for i in range(0, len(model), 64 << 10):
            yield pb.UploadModelRequest(chunk=model[i : i + (64 << 10)])

    ctl.stub.UploadModel(parts(), timeout=DEADLINE)
    ctl.stub.CreateRelease(pb.CreateReleaseRequest(name=name, version="1.0.0"), timeout=DEADLINE)
    return f"{name}:1.0.0"


def device(ctl: support.Running, fleet: str, device_id: str) -> pb.DeviceInfo | None:
    listed = ctl.stub.ListDevices(pb.ListDevicesRequest(fleet=fleet), timeout=DEADLINE).devices
    return next((d for d in listed if d.device_id == device_id), None)


def active(ctl: support.Running, fleet: str, device_id: str, release: str) -> bool:
    info = device(ctl, fleet, device_id)
    return info is not None and info.active_release == release


@pytest.mark.slow
def test_an_agent_process_skips_a_lying_peer_process_and_installs_from_the_controller(
    ctl: support.Running, broker: Broker, tmp_path: Path, digits_model: digits.TrainedModel
) -> None:
    ctl.stub.InitKey(pb.InitKeyRequest(), timeout=DEADLINE)
    keys = ctl.stub.ListKeys(pb.ListKeysRequest(), timeout=DEADLINE).keys
    (tmp_path / "trusted.pem").write_text(trusted_pem(list(keys)))
    fleet = support.unique("fleet")
    liar_id, honest_id = f"{fleet}-liar", f"{fleet}-new"
    liar = agent_process(ctl, broker, tmp_path, liar_id, fleet)
    liar.args[1:3] = [str(LYING_AGENT)]  # not ``-m edgefleet.agent``: the lying wrapper
    honest = agent_process(ctl, broker, tmp_path, honest_id, fleet)
    try:
        liar_peer = liar.start()["peer_endpoint"]
        assert liar_peer, liar.output()
        release = release_of(ctl, digits_model.onnx_bytes)
        digest = digests.of_bytes(digits_model.onnx_bytes)
        support.eventually(
            lambda: device(ctl, fleet, liar_id), timeout=60, what="the liar registered"
        )
        # No peer holds it yet: the liar installs from the controller.
        ctl.stub.Deploy(pb.DeployRequest(release=release, fleet=fleet), timeout=DEADLINE)
        support.eventually(
            lambda: active(ctl, fleet, liar_id, release), timeout=120, what="the liar active"
        )
        assert "lying peer" not in liar.output()

        honest.start()
        support.eventually(
            lambda: device(ctl, fleet, honest_id), timeout=60, what="the new device registered"
        )
        # The liar admits the new device once its signed roster lists it (else it would refuse
        # the call, not lie): a Stat with the new device's identity answers then.
        own = IdentityFiles.in_data_dir(honest.data_dir).client_tls(server_name=liar_id)
        wait_for(
            "the liar's roster to list the new device",
            lambda: stat_code(liar_peer, digest, own) == grpc.StatusCode.OK,
            timeout=60,
        )
        before = egress(ctl)
        ctl.stub.Deploy(pb.DeployRequest(release=release, fleet=fleet), timeout=DEADLINE)
        support.eventually(
            lambda: active(ctl, fleet, honest_id, release),
            timeout=120,
            what="the new device active",
        )

        # the liar was asked, and lied; the new device caught it and went on to the controller
        assert "lying peer: served" in liar.output()
        source = peers.source(liar_id, liar_peer)
        log = honest.output()
        assert f"{source} served bad bytes" in log, log[-4000:]
        assert egress(ctl) - before >= len(
            digits_model.onnx_bytes
        )  # the controller served the real bytes
        installed = BlobStore(honest.data_dir / "blobs").path(digest)
        assert installed.read_bytes() == digits_model.onnx_bytes
    finally:
        honest.kill()
        liar.kill()
