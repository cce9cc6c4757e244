"""A real fleet: a broker, agents with ONNX Runtime, presence, server- and client-side failover.

One fleet per module (starting agents is the slow part): ``victim`` is a separate process, so
it can be SIGKILLed and its last will seen; ``b`` and ``c`` run in this process; ``bare`` has no
model at all and leans on its neighbours. The kill test runs last.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from edgefleet.agent import config
from edgefleet.agent.client import FailoverClient, NoDeviceAvailableError
from edgefleet.agent.daemon import Agent
from edgefleet.agent.failover import FORWARDED_HEADER
from edgefleet.common import fastpath, sharedmem, wire
from edgefleet.demo.digits import DigitsData, TrainedModel
from edgefleet.v1 import inference_pb2, inference_pb2_grpc
from tests.agent.helpers import (
    AgentProcess,
    ArtifactServer,
    Signer,
    Watcher,
    active_on,
    model_info,
    predict,
    unique_id,
    wait_for,
)
from tests.conftest import Broker


@dataclass
class Fleet:
    name: str
    release: str
    victim: AgentProcess
    victim_endpoint: str
    agents: dict[str, Agent]  # in-process: b, c (serving), bare (no model)
    endpoints: dict[str, str]

    def table(self, key: str) -> dict[str, bool]:
        return {n.device_id: n.online for n in self.agents[key].neighbours.snapshot()}


@pytest.fixture(scope="module")
def fleet(
    broker: Broker, tmp_path_factory: pytest.TempPathFactory, digits_model: TrainedModel
) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("fleet")
    name = unique_id("fleet")
    signer = Signer(root)
    artifacts = ArtifactServer(root / "blobs")
    release = signer.release(digits_model.onnx_bytes)
    artifacts.publish(release)
    agents: dict[str, Agent] = {}
    watchers: list[Watcher] = []
    victim = AgentProcess(
        device_id=unique_id("victim"),
        data_dir=root / "victim",
        broker_url=broker.url,
        controller=artifacts.address,
        key_file=signer.key_file,
        fleet=name,
    )
    try:
        info = victim.start()
        for key in ("b", "c", "bare"):
            device_id = unique_id(key)
            values: dict[str, Any] = {
                "device_id": device_id,
                "fleet": name,
                "mqtt": broker.url,
                "controller": artifacts.address,
                "data_dir": root / device_id,
                "metrics_port": -1,
                "trusted_keys": (signer.key_file,),
                "telemetry_interval": 5.0,
                "failover_deadline": 2.0,
            }
            agents[key] = Agent(config.merge(values))
            agents[key].start()
        serving = [victim.device_id, agents["b"].device_id, agents["c"].device_id]
        for generation, device_id in enumerate(serving, start=1):
            w = Watcher(broker.url, device_id=device_id, fleet=name)
            watchers.append(w)
            w.publish_desired(
                signer.desired(release, device_id=device_id, generation=generation, fleet=name)
            )
        for w in watchers:
            w.wait_status(active_on(release.ref), what=f"active on {release.ref}", timeout=30)
        yield Fleet(
            name=name,
            release=release.ref,
            victim=victim,
            victim_endpoint=info["predict_endpoint"],
            agents=agents,
            endpoints={k: a.reporter.status.predict_endpoint for k, a in agents.items()},
        )
    finally:
        for w in watchers:
            w.close()
        victim.kill()
        for agent in agents.values():
            agent.stop()
        artifacts.stop()


def healthy_neighbours(agent: Agent) -> set[str]:
    return {n.device_id for n in agent.neighbours.online() if n.release}


def test_neighbour_tables_converge(fleet: Fleet) -> None:
    b, c, bare = fleet.agents["b"], fleet.agents["c"], fleet.agents["bare"]
    victim = fleet.victim.device_id
    wait_for("b sees victim and c serving", lambda: healthy_neighbours(b) == {victim, c.device_id})
    wait_for("c sees victim and b serving", lambda: healthy_neighbours(c) == {victim, b.device_id})
    wait_for("bare sees 3 serving", lambda: len(healthy_neighbours(bare)) == 3)
    # every one of them is online (bare too, with no model); nobody lists itself
    assert fleet.table("b") == {victim: True, c.device_id: True, bare.device_id: True}
    assert b.device_id not in fleet.table("b")
    assert b.neighbours.malformed == 0

    # the victim process's table, as ModelInfo shows it
    def victim_lists_three() -> inference_pb2.ModelInfoResponse | None:
        info = model_info(fleet.victim_endpoint)
        return info if len([n for n in info.neighbours if n.online]) == 3 else None

    info = wait_for("victim to list b, c and bare", victim_lists_three)
    by_id = {n.device_id: n for n in info.neighbours}
    assert by_id[b.device_id].endpoint == fleet.endpoints["b"]
    assert by_id[b.device_id].release == fleet.release
    assert by_id[bare.device_id].release == ""


def test_agent_without_a_model_forwards_to_a_neighbour(
    fleet: Fleet, digits_data: DigitsData
) -> None:
    wait_for("bare sees 3 serving", lambda: len(healthy_neighbours(fleet.agents["bare"])) == 3)
    x = digits_data.x_test[:16]
    reply = predict(fleet.endpoints["bare"], {"pixels": x})
    assert reply.served_by_neighbour
    assert reply.release == fleet.release
    serving = {
        fleet.victim.device_id: fleet.victim_endpoint,
        fleet.agents["b"].device_id: fleet.endpoints["b"],
        fleet.agents["c"].device_id: fleet.endpoints["c"],
    }
    assert reply.device_id in serving
    direct = predict(serving[reply.device_id], {"pixels": x})
    assert not direct.served_by_neighbour
    got = {o.name: wire.array_from_pb(o) for o in reply.outputs}
    want = {o.name: wire.array_from_pb(o) for o in direct.outputs}
    assert got.keys() == want.keys() == {"probabilities", "label"}
    for key, value in want.items():
        np.testing.assert_array_equal(got[key], value)
    assert fleet.agents["bare"].forwarder is not None
    assert fleet.agents["bare"].forwarder.forwarded >= 1


def test_shared_memory_inputs_reach_a_neighbour_inline(
    fleet: Fleet, digits_data: DigitsData
) -> None:
    """A local app's request on bare's Unix socket, its input in shared memory: bare forwards
    it with the bytes inline, since a neighbour cannot read this device's shared memory."""
    bare = fleet.agents["bare"]
    wait_for("bare sees 3 serving", lambda: len(healthy_neighbours(bare)) == 3)
    assert bare.server.socket_endpoint is not None
    x = np.ascontiguousarray(digits_data.x_test[:16])
    stager = sharedmem.Stager(threshold=0)
    try:
        with (
            stager.request({"pixels": x}) as request,
            grpc.insecure_channel(bare.server.socket_endpoint) as channel,
        ):
            assert request.shared_inputs and not request.inputs
            reply = inference_pb2_grpc.InferenceServiceStub(channel).Predict(request, timeout=10)
    finally:
        stager.close()
    assert reply.served_by_neighbour and reply.release == fleet.release
    direct = predict(fleet.endpoints["b"], {"pixels": x})
    assert {o.name: o.data for o in reply.outputs} == {o.name: o.data for o in direct.outputs}
    # the same over the fast local path, its input in a named region, a sealed one passed
    # with the request and a registered one
    assert bare.fast_server is not None
    stager = sharedmem.Stager(threshold=0)
    try:
        with fastpath.FastPathClient(bare.fast_server.path) as fast:
            with stager.request({"pixels": x}) as request:
                named = fast.predict(request)
            with stager.sealed_request({"pixels": x}) as (request, fds):
                sealed = fast.predict(request, fds=fds)
        with fastpath.FastPathClient(bare.fast_server.path, shm_threshold=0) as fast:
            registered = fast.predict_arrays({"pixels": x})  # in a region it registered
    finally:
        stager.close()
    for via in (named, sealed, registered):
        assert via.served_by_neighbour and via.release == fleet.release
        assert {o.name: o.data for o in via.outputs} == {o.name: o.data for o in direct.outputs}


def test_forwarded_requests_are_not_forwarded_again(fleet: Fleet) -> None:
    bare = fleet.agents["bare"]
    assert bare.forwarder is not None
    before = bare.forwarder.forwarded
    request = inference_pb2.PredictRequest(
        inputs=[wire.array_to_pb("pixels", np.zeros((1, 64), np.float32))]
    )
    with grpc.insecure_channel(fleet.endpoints["bare"]) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Predict(request, timeout=5, metadata=((FORWARDED_HEADER, "someone"),))
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "no active model" in (caught.value.details() or "")
    assert bare.forwarder.forwarded == before
    # a serving agent answers a forwarded request itself, unmarked
    with grpc.insecure_channel(fleet.endpoints["b"]) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        reply = stub.Predict(request, timeout=5, metadata=((FORWARDED_HEADER, "someone"),))
    assert reply.device_id == fleet.agents["b"].device_id
    assert not reply.served_by_neighbour


def test_no_neighbour_available_says_so(tmp_path: Path, broker: Broker, signer_dir: Path) -> None:
    # a fleet of one: nobody to forward to
    signer = Signer(signer_dir)
    agent = Agent(
        config.merge(
            {
                "device_id": unique_id("alone"),
                "fleet": unique_id("solo"),
                "mqtt": broker.url,
                "data_dir": tmp_path / "alone",
                "metrics_port": -1,
                "trusted_keys": (signer.key_file,),
            }
        )
    )
    endpoints = agent.start()
    try:
        with pytest.raises(grpc.RpcError) as caught:
            predict(endpoints.predict, {"pixels": np.zeros((1, 64), np.float32)})
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "no neighbour is available" in (caught.value.details() or "")
    finally:
        agent.stop()


@pytest.fixture
def signer_dir(tmp_path: Path) -> Path:
    path = tmp_path / "keys"
    path.mkdir()
    return path


def test_killed_agent_goes_offline_and_the_client_fails_over(
    fleet: Fleet, digits_data: DigitsData
) -> None:
    victim = fleet.victim.device_id
    b, c = fleet.agents["b"], fleet.agents["c"]
    x, y = digits_data.x_test[:64], digits_data.y_test[:64]
    # a local app on the victim's Unix socket, its input in shared memory; neighbours over TCP
    socket = fleet.victim.data_dir / "predict.sock"
    with FailoverClient(
        fleet.victim_endpoint, local_socket=socket, shm_threshold=0, neighbours_refresh=60.0
    ) as client:
        assert client.endpoint == f"unix:{socket}"
        assert client.fast_endpoint == f"unix:{socket.with_name('predict.fast.sock')}"
        wait_for(
            "the client to cache 2 serving neighbours",
            lambda: (
                client.refresh()
                and len([n for n in client.neighbours if n.online and n.release]) >= 2
            ),
        )
        local = client.predict({"pixels": x})
        assert local.device_id == victim
        assert not local.served_by_neighbour
        assert client.paths == {"fast": 1}  # the fast local path, its input in shared memory

        fleet.victim.kill()  # SIGKILL: no goodbye; the broker sends the last will
        wait_for("b to see the victim offline", lambda: fleet.table("b").get(victim) is False)
        wait_for("c to see the victim offline", lambda: fleet.table("c").get(victim) is False)
        assert victim not in healthy_neighbours(b)

        reply = client.predict({"pixels": x})
        assert reply.served_by_neighbour
        assert client.paths == {"fast": 1, "neighbour": 1}
        assert reply.device_id in {b.device_id, c.device_id}
        assert reply.release == fleet.release
        outputs = {o.name: wire.array_from_pb(o) for o in reply.outputs}
        assert (outputs["label"] == y).mean() > 0.8
        labels_local = {o.name: wire.array_from_pb(o) for o in local.outputs}["label"]
        np.testing.assert_array_equal(outputs["label"], labels_local)


def test_client_with_nobody_to_go_to_raises(digits_data: DigitsData) -> None:
    from tests.conftest import free_port

    with (
        FailoverClient(f"127.0.0.1:{free_port()}", failover_deadline=0.5) as client,
        pytest.raises(NoDeviceAvailableError, match="no neighbour is known"),
    ):
        client.predict({"pixels": digits_data.x_test[:1]})
