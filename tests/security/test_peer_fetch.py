"""Peer-to-peer downloads inside a fleet, against real parts: a real controller in this process
with mTLS (its devices' port, enrollment, the signed roster), devices enrolled for real, real
agents with their real mTLS peer listeners, Predict servers and ONNX Runtime, a real Mosquitto.

Desired states name devices that already hold the release before the controller; a device
fetches from them over mTLS with its own certificate, and checks every byte against the signed
digest, so a peer that serves wrong bytes is skipped and the controller serves instead.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from edgefleet.agent import fetching
from edgefleet.agent.daemon import Agent
from edgefleet.agent.identity import IdentityFiles
from edgefleet.common import peers, wire
from edgefleet.common.artifacts import ArtifactServicer, BlobStore
from edgefleet.common.errors import FetchError
from edgefleet.controller.peering import Holder, choose
from edgefleet.demo import digits
from edgefleet.edgectl.keys import trusted_pem
from edgefleet.v1 import artifact_pb2_grpc, mqtt_pb2
from edgefleet.v1 import controller_pb2 as pb
from tests.agent.helpers import wait_for
from tests.conftest import Broker
from tests.controller import support
from tests.security.test_grpc_mtls import agent_settings, enroll, stat_code, tls_settings

DEADLINE = 30.0


@pytest.fixture
def ctl(tmp_path: Path, broker: Broker) -> Iterator[support.Running]:
    running = support.start(tls_settings(tmp_path / "ctl", broker))
    yield running
    running.stop()


def egress(ctl: support.Running) -> int:
    """The controller's ArtifactService bytes sent so far (its /metrics counter)."""
    value = ctl.controller.metrics.registry.get_sample_value(
        "edgefleet_controller_artifact_bytes_served_total"
    )
    return int(value or 0)


def sources_of(agent: Agent) -> tuple[str, ...]:
    """The artifact sources of the desired state the agent last accepted."""
    active = agent.installer.state.active
    assert active is not None
    signed = agent.store.slot_desired(active.slot)
    assert signed is not None
    msg = mqtt_pb2.DesiredState.FromString(wire.decode_envelope(signed).payload)
    return tuple(msg.artifact_sources)


class Fleet:
    """Enrolled agents of one fleet on one controller, started and stopped together."""

    def __init__(self, ctl: support.Running, broker: Broker, tmp_path: Path) -> None:
        self.ctl, self.broker, self.tmp = ctl, broker, tmp_path
        ctl.stub.InitKey(pb.InitKeyRequest(), timeout=DEADLINE)
        self.key_file = tmp_path / "trusted.pem"
        self.key_file.write_text(trusted_pem(list(ctl.stub.ListKeys(pb.ListKeysRequest()).keys)))
        self.name = support.unique("fleet")
        self.agents: dict[str, Agent] = {}

    def start(self, device_id: str) -> Agent:
        result = enroll(self.ctl, device_id, self.tmp / device_id, fleet=self.name)
        assert result.exit_code == 0, result.output
        agent = Agent(agent_settings(self.ctl, self.broker, self.tmp / device_id, self.key_file))
        self.agents[device_id] = agent
        agent.start()
        assert agent.tls and agent.peer_endpoint
        return agent

    def wait_rosters(self) -> None:
        """Every agent's signed roster lists every agent (peers admit only listed devices)."""

        def complete() -> bool:
            for a in self.agents.values():
                roster = a.neighbours.roster
                if roster is None:
                    return False
                for d, b in self.agents.items():
                    if roster.endpoint_of(d) != b.peer_endpoint:
                        return False
            return True

        wait_for("every roster listing every agent", complete, timeout=60)

    def deploy(self, release: str) -> None:
        self.ctl.stub.Deploy(pb.DeployRequest(release=release, fleet=self.name), timeout=DEADLINE)

    def wait_active(self, release: str, *ids: str) -> None:
        for d in ids:
            agent = self.agents[d]

            def serving(agent: Agent = agent) -> bool:
                return _active(agent) == release

            wait_for(f"{d} serving {release}", serving, timeout=90)

    def stop(self) -> None:
        for agent in reversed(list(self.agents.values())):
            agent.stop()


def _active(agent: Agent) -> str:
    active = agent.installer.state.active
    return active.release if active is not None else ""


def release_of(ctl: support.Running, model: bytes, version: str = "1.0.0") -> tuple[str, int]:
    name = support.unique("digits")
    support.upload(ctl.stub, name, model)
    ctl.stub.CreateRelease(pb.CreateReleaseRequest(name=name, version=version), timeout=30)
    return f"{name}:{version}", len(model)


@pytest.mark.slow
def test_later_devices_fetch_from_an_earlier_one_not_the_controller(
    ctl: support.Running, broker: Broker, tmp_path: Path, digits_model: digits.TrainedModel
) -> None:
    fleet = Fleet(ctl, broker, tmp_path)
    try:
        first = fleet.start(f"{fleet.name}-a")
        release, model_bytes = release_of(ctl, digits_model.onnx_bytes)
        support.eventually(
            lambda: ctl.stub.ListDevices(pb.ListDevicesRequest(fleet=fleet.name)).devices,
            what="the first device registered",
        )
        fleet.deploy(release)
        fleet.wait_active(release, f"{fleet.name}-a")
        seeded = egress(ctl)
        assert seeded >= model_bytes  # the first device had no peer: the controller served it
        assert not any(peers.is_source(s) for s in sources_of(first))

        later = [f"{fleet.name}-{x}" for x in "bcd"]
        for d in later:
            fleet.start(d)
        fleet.wait_rosters()
        wait_for(
            "the controller seeing the later devices",
            lambda: len(ctl.stub.ListDevices(pb.ListDevicesRequest(fleet=fleet.name)).devices) == 4,
        )
        fleet.deploy(release)
        fleet.wait_active(release, *later)

        # the later devices were told the first one first, the controller last; it served them
        for d in later:
            sources = sources_of(fleet.agents[d])
            assert peers.is_source(sources[0]), sources
            assert not peers.is_source(sources[-1]), sources
        assert first.peer_artifacts is not None
        assert first.peer_artifacts.served_bytes >= len(later) * model_bytes
        assert egress(ctl) - seeded < model_bytes  # not one more model from the controller
    finally:
        fleet.stop()


@pytest.mark.slow
def test_a_peer_serving_wrong_bytes_is_skipped_and_the_controller_serves(
    ctl: support.Running, broker: Broker, tmp_path: Path, digits_model: digits.TrainedModel
) -> None:
    fleet = Fleet(ctl, broker, tmp_path)
    try:
        liar_id, honest_id = f"{fleet.name}-liar", f"{fleet.name}-new"
        liar = fleet.start(liar_id)
        release, model_bytes = release_of(ctl, digits_model.onnx_bytes)
        support.eventually(
            lambda: ctl.stub.ListDevices(pb.ListDevicesRequest(fleet=fleet.name)).devices,
            what="the liar registered",
        )
        fleet.deploy(release)
        fleet.wait_active(release, liar_id)

        # the liar's stored blob turns into other bytes of the same size, served unverified
        assert liar.installer.state.active is not None
        digest = liar.installer.state.active.model_digest
        blob = liar.store.blobs.path(digest)
        wrong = bytes(b ^ 0xFF for b in blob.read_bytes())
        blob.unlink()  # the slot's hard link keeps the served model's bytes
        blob.write_bytes(wrong)
        assert liar.peer_artifacts is not None
        liar.peer_artifacts._inner = ArtifactServicer(liar.store.blobs, verify=False)
        held_chunk = liar.peer_artifacts._chunk  # and each chunk of a chunked model, flipped

        def lying_chunk(chunk_digest: str) -> bytes | None:
            data = held_chunk(chunk_digest)
            return None if data is None else bytes(b ^ 0xFF for b in data)

        liar.peer_artifacts._chunk = lying_chunk

        honest = fleet.start(honest_id)
        fleet.wait_rosters()
        wait_for(
            "the controller seeing the new device",
            lambda: len(ctl.stub.ListDevices(pb.ListDevicesRequest(fleet=fleet.name)).devices) == 2,
        )
        before = egress(ctl)
        fleet.deploy(release)
        fleet.wait_active(release, honest_id)

        sources = sources_of(honest)
        assert sources[0] == peers.source(liar_id, liar.peer_endpoint), sources
        assert liar.peer_artifacts.served_bytes >= model_bytes  # it was asked, and lied
        assert egress(ctl) - before >= model_bytes  # the controller served the real bytes
        assert honest.installer.state.active is not None
        assert honest.installer.state.active.model_digest == digest
        installed = honest.store.blobs.path(digest).read_bytes()
        assert installed == digits_model.onnx_bytes
    finally:
        fleet.stop()


@pytest.mark.slow
def test_the_peer_listener_serves_blobs_only_to_listed_devices_of_the_fleet(
    ctl: support.Running, broker: Broker, tmp_path: Path, digits_model: digits.TrainedModel
) -> None:
    fleet = Fleet(ctl, broker, tmp_path)
    try:
        holder_id = f"{fleet.name}-a"
        holder = fleet.start(holder_id)
        release, _ = release_of(ctl, digits_model.onnx_bytes)
        support.eventually(
            lambda: ctl.stub.ListDevices(pb.ListDevicesRequest(fleet=fleet.name)).devices,
            what="the device registered",
        )
        fleet.deploy(release)
        fleet.wait_active(release, holder_id)
        assert holder.installer.state.active is not None
        digest = holder.installer.state.active.model_digest
        result = enroll(ctl, "outsider", tmp_path / "outsider", fleet="elsewhere")
        assert result.exit_code == 0, result.output
        outsider = IdentityFiles.in_data_dir(tmp_path / "outsider").client_tls(
            server_name=holder_id
        )
        peer = holder.peer_endpoint
        assert stat_code(peer, digest, outsider) == grpc.StatusCode.PERMISSION_DENIED
        assert stat_code(peer, digest, None) == grpc.StatusCode.UNAVAILABLE  # plaintext
        # its own identity is on the roster: a blob it holds answers, anything else NOT_FOUND
        own = IdentityFiles.in_data_dir(tmp_path / holder_id).client_tls(server_name=holder_id)
        wait_for("the holder on its own roster", lambda: holder.neighbours.listed(holder_id))
        assert stat_code(peer, digest, own) == grpc.StatusCode.OK
        other = "sha256:" + "0" * 64
        assert stat_code(peer, other, own) == grpc.StatusCode.NOT_FOUND
    finally:
        fleet.stop()


def test_choose_names_same_site_holders_never_itself_at_most_the_limit() -> None:
    holders = [Holder(f"d{i}", f"10.0.0.{i}:7000", "north" if i < 5 else "south") for i in range(9)]
    near = choose(holders, device_id="d1", site="north", limit=3)
    assert len(near) == 3
    named = [peers.parse(s)[0] for s in near]
    assert "d1" not in named and all(int(d[1:]) < 5 for d in named)
    assert choose(holders, device_id="d1", site="nowhere") == []
    anywhere = choose(holders, device_id="d1", site="", limit=10)
    assert len(anywhere) == 8
    spread = {tuple(choose(holders, device_id=f"d{i}", site="", limit=1)) for i in range(9)}
    assert len(spread) > 1  # the first peer named differs between devices


def test_without_an_identity_a_peer_source_is_skipped_for_the_next(tmp_path: Path) -> None:
    """An ``--insecure`` agent handed a ``peer://`` source (peers serve mTLS only) goes on to
    the next source, a real ArtifactService here, and gets the signed bytes from it."""
    data = b"model bytes " * 1000
    store = BlobStore(tmp_path / "served")
    digest = store.put(data)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    artifact_pb2_grpc.add_ArtifactServiceServicer_to_server(ArtifactServicer(store), server)
    endpoint = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    server.start()
    try:
        partial = tmp_path / "partial" / "blob.part"
        fetching.download(
            [peers.source("neighbour", "127.0.0.1:1"), endpoint],
            digest,
            partial,
            size=len(data),
            deadline_s=10,
            stopping=threading.Event(),
            on_bytes=lambda _n: None,
        )
        assert partial.read_bytes() == data
        with pytest.raises(FetchError, match="mTLS only"):
            fetching.download(
                [peers.source("neighbour", "127.0.0.1:1")],
                digest,
                tmp_path / "other.part",
                size=len(data),
                deadline_s=10,
                stopping=threading.Event(),
                on_bytes=lambda _n: None,
            )
    finally:
        server.stop(0).wait()
