"""Failover forwards only to devices the controller vouches for, against real parts: a real
controller in this process (it publishes the signed fleet roster), real agents in this process
with their real Predict servers and ONNX Runtime, a real Mosquitto, and an attacker's real gRPC
Predict server.

Before the roster an agent took every presence message at its word and preferred the freshest:
one forged retained presence naming a neighbour's device id and the attacker's endpoint, or a
device of its own, redirected its neighbours' failover, so the attacker received their
inference inputs and chose their outputs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.agent import config
from edgefleet.agent.daemon import Agent
from edgefleet.agent.neighbours import NeighbourTable
from edgefleet.common import signing, topics, trustbundle, wire
from edgefleet.common import types as t
from edgefleet.common.signing import TrustStore
from edgefleet.common.trustbundle import Roster, RosterEntry
from edgefleet.controller import roster
from edgefleet.demo import digits
from edgefleet.edgectl.keys import trusted_pem
from edgefleet.v1 import controller_pb2 as pb
from edgefleet.v1 import inference_pb2, inference_pb2_grpc
from tests.agent.helpers import predict, unique_id, wait_for
from tests.conftest import Broker
from tests.controller import support

DEADLINE = 30.0


class Attacker(inference_pb2_grpc.InferenceServiceServicer):
    """A Predict server that records what it was sent and answers as if it were ``claims``."""

    def __init__(self, claims: str) -> None:
        self.claims = claims
        self.calls = 0
        self._lock = threading.Lock()
        self._pool = futures.ThreadPoolExecutor(max_workers=2)
        self.server = grpc.server(self._pool)
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(self, self.server)
        self.endpoint = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def Predict(
        self, request: inference_pb2.PredictRequest, context: grpc.ServicerContext
    ) -> inference_pb2.PredictResponse:
        with self._lock:
            self.calls += 1
        return inference_pb2.PredictResponse(device_id=self.claims, release="digits:6.6.6")

    def stop(self) -> None:
        self.server.stop(0).wait()
        self._pool.shutdown(wait=True)


class Forger:
    """Publishes retained messages on the broker as a device could (no ACL on the test
    broker: the shipped ACL keeps devices to their own presence, the roster guards the rest)."""

    def __init__(self, broker: Broker) -> None:
        host, port = broker.url.removeprefix("mqtt://").rsplit(":", 1)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=unique_id("forger"))
        self.client.connect(host, int(port))
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)

    def presence(self, fleet: str, device_id: str, endpoint: str) -> None:
        p = t.Presence(
            device_id=device_id,
            fleet=fleet,
            online=True,
            predict_endpoint=endpoint,
            active_release="digits:1.0.0",
            at_ms=time.time_ns() // 1_000_000,
        )
        self.publish(topics.presence(fleet, device_id), wire.presence_to_pb(p).SerializeToString())

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def ctl(tmp_path: Path, own_broker: Broker) -> Iterator[support.Running]:
    running = support.start(support.settings(tmp_path / "ctl", own_broker.url))
    yield running
    running.stop()


def _agent(
    ctl: support.Running, broker: Broker, data: Path, key_file: Path, *, device_id: str, fleet: str
) -> Agent:
    return Agent(
        config.merge(
            {
                "device_id": device_id,
                "fleet": fleet,
                "mqtt": broker.url,
                "controller": ctl.address,
                "data_dir": data / device_id,
                "predict_listen": "127.0.0.1:0",
                "metrics_port": -1,
                "trusted_keys": (key_file,),
                "telemetry_interval": 1.0,
            }
        )
    )


@pytest.mark.slow
def test_forged_presence_cannot_redirect_failover_to_an_attacker(
    ctl: support.Running,
    own_broker: Broker,
    tmp_path: Path,
    digits_model: digits.TrainedModel,
    digits_data: digits.DigitsData,
) -> None:
    ctl.stub.InitKey(pb.InitKeyRequest(), timeout=DEADLINE)
    key_file = tmp_path / "trusted.pem"
    key_file.write_text(trusted_pem(list(ctl.stub.ListKeys(pb.ListKeysRequest()).keys)))
    fleet, name = support.unique("fleet"), support.unique("digits")
    serving_id, bare_id = f"{fleet}-serving", f"{fleet}-bare"
    attacker = Attacker(claims=serving_id)
    forger = Forger(own_broker)
    agents: list[Agent] = []
    try:
        serving = _agent(ctl, own_broker, tmp_path, key_file, device_id=serving_id, fleet=fleet)
        agents.append(serving)
        serving_endpoint = serving.start().predict
        support.upload(ctl.stub, name, digits_model.onnx_bytes)
        release = f"{name}:1.0.0"
        ctl.stub.CreateRelease(pb.CreateReleaseRequest(name=name, version="1.0.0"), timeout=30)
        support.eventually(
            lambda: ctl.stub.ListDevices(pb.ListDevicesRequest(fleet=fleet)).devices,
            what="the serving device registered",
        )
        ctl.stub.Deploy(pb.DeployRequest(release=release, fleet=fleet), timeout=DEADLINE)
        wait_for("the serving agent active", lambda: serving.predictor.current, timeout=60)

        bare = _agent(ctl, own_broker, tmp_path, key_file, device_id=bare_id, fleet=fleet)
        agents.append(bare)
        bare_endpoint = bare.start().predict
        table = bare.neighbours

        def vouched() -> bool:
            roster = table.roster
            return roster is not None and roster.endpoint_of(serving_id) == serving_endpoint

        wait_for("the bare agent to hold the roster naming its neighbour", vouched)
        wait_for("the neighbour's presence", lambda: [n for n in table.snapshot() if n.healthy])

        # The attacker claims the serving device's presence (fresher than the real one) and
        # announces a device of its own; both point at its endpoint.
        forger.presence(fleet, serving_id, attacker.endpoint)
        forger.presence(fleet, "mallory", attacker.endpoint)
        wait_for("both forgeries counted", lambda: table.forged >= 2)
        # A roster of the attacker's making, signed by a key the agents do not trust.
        fake = Roster(
            fleet,
            time.time_ns() // 1_000_000 + 10**9,
            (RosterEntry(serving_id, attacker.endpoint), RosterEntry("mallory", attacker.endpoint)),
        )
        forger.publish(topics.roster(fleet), trustbundle.seal_roster(fake, signing.generate()))
        wait_for("the forged roster refused", lambda: table.rosters_rejected >= 1)

        assert [(n.device_id, n.endpoint) for n in table.snapshot()] == [
            (serving_id, serving_endpoint)
        ]
        reply = predict(bare_endpoint, {"pixels": digits_data.x_test[:4]})
        assert reply.served_by_neighbour
        assert (reply.device_id, reply.release) == (serving_id, release)
        assert attacker.calls == 0
    finally:
        for agent in reversed(agents):
            agent.stop()
        forger.close()
        attacker.stop()


def test_the_roster_decides_which_presence_counts_and_catches_up_with_a_restart() -> None:
    """The table's rules without a broker: rows follow the newest verified roster."""
    key = signing.generate()
    trust = TrustStore([key.public_key()])
    ms = iter(range(1_000, 2_000)).__next__
    table = NeighbourTable(device_id="me", fleet="f1", trust=trust, clock_ms=ms)

    def presence(device_id: str, endpoint: str) -> tuple[str, bytes]:
        p = t.Presence(device_id=device_id, fleet="f1", online=True,
                       predict_endpoint=endpoint, active_release="digits:1.0.0")  # fmt: skip
        return topics.presence("f1", device_id), wire.presence_to_pb(p).SerializeToString()

    def roster(at: int, *entries: tuple[str, str]) -> bytes:
        return trustbundle.seal_roster(
            Roster("f1", at, tuple(RosterEntry(d, e) for d, e in entries)), key
        )

    assert table.observe(*presence("a", "a:1"))  # no roster yet: taken as before
    assert table.observe(table.roster_topic, roster(10, ("a", "a:1"), ("b", "b:1")))
    assert not table.observe(*presence("a", "evil:1"))  # forged: the row stays
    assert not table.observe(*presence("x", "x:1"))  # not on the roster
    assert not table.observe(*presence("b", "b:2"))  # b restarted on a new port
    assert table.forged == 3
    assert [(n.device_id, n.endpoint) for n in table.snapshot()] == [("a", "a:1")]
    # The controller saw b's new status: the next roster lists b:2 and the kept presence counts.
    assert table.observe(table.roster_topic, roster(20, ("a", "a:1"), ("b", "b:2")))
    assert [(n.device_id, n.endpoint) for n in table.snapshot()] == [("a", "a:1"), ("b", "b:2")]
    assert not table.observe(table.roster_topic, roster(15, ("a", "evil:1")))  # older: refused
    other = signing.generate()
    forged = trustbundle.seal_roster(Roster("f1", 99, (RosterEntry("a", "evil:1"),)), other)
    assert not table.observe(table.roster_topic, forged)
    assert table.rosters_rejected == 2
    assert table.roster is not None and table.roster.endpoint_of("a") == "a:1"

    strict = NeighbourTable(device_id="me", fleet="f1", trust=trust, require_roster=True)
    assert not strict.observe(*presence("a", "a:1"))  # --failover-require-roster: none held yet
    assert strict.snapshot() == []
    assert strict.observe(strict.roster_topic, roster(10, ("a", "a:1")))
    assert [n.device_id for n in strict.snapshot()] == ["a"]  # the kept presence now counts


def test_the_roster_lists_a_fleet_by_the_registry_not_by_what_devices_say() -> None:
    statuses = [
        ("a", "f1", "a:1"),  # enrolled in f1
        ("b", "f1", "b:1"),  # enrolled in f2, says f1
        ("c", "f1", "c:1"),  # never enrolled, says f1 (a fleet with enrolled devices)
        ("d", "f1", "d:1"),  # enrolled in f1, revoked
        ("e", "f1", ""),  # no endpoint reported
        ("f", "lab", "f:1"),  # a fleet nobody enrolled in (plain MQTT): by its status
    ]
    enrolled = {"a": ("f1", "enrolled"), "b": ("f2", "enrolled"), "d": ("f1", "revoked")}
    assert roster.build(statuses, enrolled) == {
        "f1": (RosterEntry("a", "a:1"),),
        "lab": (RosterEntry("f", "f:1"),),
    }
