"""EdgeFleet on a clustered broker: a real three-node NATS cluster (its MQTT interface, over
JetStream) instead of Mosquitto, with the controller and agents unchanged.

A real ``edge-controller`` and four ``edge-agent`` processes, spread over the nodes: each is
given every node's URL (``--mqtt mqtt://n0,mqtt://n1,mqtt://n2``), its own node first. Shown:
a rollout succeeds; the retained desired states are on every node; an agent SIGKILLed leaves
its last will (offline), and back on another node it catches up with a rollout made while it
was away; a node SIGKILLed mid-rollout, its agents reconnect to another node and the rollout
completes; the node back, the controller's own node SIGKILLed mid-rollout, the controller too
moves to another node and the rollout completes.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.agent import failpoints
from edgefleet.common import rolloutwords, topics
from edgefleet.common.types import ReleaseRef
from edgefleet.demo import digits
from edgefleet.demo.errors import StartError
from edgefleet.demo.processes import Processes
from edgefleet.demo.stack import Agent, AgentSpec, Controller, start_agents, start_controller
from edgefleet.edgectl.client import ControllerClient
from tests.brokers.nats import NatsCluster, nats_binary

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

FINISHED = ("succeeded", "rolled_back")
INSTALL_S = 1.5  # each download stalls this long (a failpoint): a rollout takes a while
# the node each device starts on; node 1 is the one killed, the controller stays on node 0
HOME = {"d0": 0, "d1": 1, "d2": 1, "d3": 2}
# a cluster that lost a node elects new JetStream leaders before MQTT clients get back in:
# tens of seconds on a loaded 2-core machine
RECOVER_S = 180.0


@dataclass
class Stack:
    cluster: NatsCluster
    fleet: str
    procs: Processes
    workdir: Path
    controller: Controller
    client: ControllerClient
    trusted: Path
    agents: dict[str, Agent] = field(default_factory=dict)
    versions: int = 0

    def device(self, name: str) -> str:
        return f"{self.fleet}-{name}"

    def start_agent(self, name: str, first_node: int) -> None:
        before = os.environ.get(failpoints.ENV)
        os.environ[failpoints.ENV] = f"fetch_chunk=sleep:{INSTALL_S:g}"
        try:
            (agent,) = start_agents(
                self.procs,
                [AgentSpec(self.device(name), self.fleet)],
                workdir=self.workdir,
                mqtt_url=self.cluster.urls(first_node),
                controller=self.controller.address,
                trusted_key=self.trusted,
                insecure=True,  # NATS's MQTT: no mTLS broker of the run's CA
            )
        finally:
            if before is None:
                os.environ.pop(failpoints.ENV, None)
            else:
                os.environ[failpoints.ENV] = before
        self.agents[name] = agent

    def release(self) -> str:
        self.versions += 1
        version = f"1.0.{self.versions}"
        self.client.create_release("digits", version=version)
        return f"digits:{version}"

    def phase(self, rollout_id: str) -> str:
        return rolloutwords.phase_word(self.client.get_rollout(rollout_id).rollout_phase)

    def finished(self, rollout_id: str, timeout: float) -> str:
        wait(lambda: self.phase(rollout_id) in FINISHED, timeout, f"rollout {rollout_id}", self)
        return self.phase(rollout_id)

    def converged(self, release: str, timeout: float = 60.0) -> None:
        """Until the controller lists every device on ``release`` and online (a will a node
        delivers late is answered by its agent saying online again)."""
        want = {name: (release, True) for name in HOME}
        wait(lambda: self.states() == want, timeout, f"every device online on {release}", self)

    def states(self) -> dict[str, tuple[str, bool]]:
        """device name -> (active release, online), as the controller lists them."""
        prefix = f"{self.fleet}-"
        return {
            d.device_id.removeprefix(prefix): (d.active_release, d.online)
            for d in self.client.list_devices(self.fleet)
        }

    def logs(self) -> str:
        procs = "\n".join(f"--- {p.name}\n{p.tail(15)}" for p in self.procs.started)
        nodes = "\n".join(
            f"--- {n.name}\n" + "\n".join(n.log.read_text().splitlines()[-10:])
            for n in self.cluster.nodes
        )
        return f"{procs}\n{nodes}"


def wait(probe: Callable[[], bool], timeout: float, what: str, stack: Stack) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{stack.logs()}")
        time.sleep(0.3)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    binary = nats_binary()
    if binary is None:
        pytest.skip("nats-server is not installed (apt-get install nats-server)")
    workdir = tmp_path_factory.mktemp("nats")
    cluster = NatsCluster(binary, workdir / "cluster")
    try:
        cluster.start()
        with Processes(workdir / "logs") as procs:
            try:
                tag = uuid.uuid4().hex[:6]
                controller = start_controller(
                    procs,
                    workdir / "controller",
                    mqtt_url=cluster.urls(0),
                    extra_args=["--mqtt-client-id", f"controller-{tag}"],
                    insecure=True,
                )
                client = ControllerClient(controller.api, token=controller.admin_token())
                trusted = workdir / "trusted.pem"
                trusted.write_text(client.init_key().public_key_pem)
                model = digits.train(digits.load_data(), hidden=16, max_iter=50)
                client.upload_model([model.onnx_bytes], name="digits", size=len(model.onnx_bytes))
                s = Stack(cluster, f"nats-{tag}", procs, workdir, controller, client, trusted)
                for name, node in HOME.items():
                    s.start_agent(name, node)
            except StartError as exc:
                pytest.fail(f"{exc}; the end of its log:\n{exc.log_tail}")
            try:
                wait(lambda: set(s.states()) == set(HOME), 60, "every device registered", s)
                yield s
            finally:
                client.close()
    finally:
        cluster.close()


def test_devices_spread_over_the_nodes_and_a_rollout_succeeds(stack: Stack) -> None:
    # each on its own first node, unless that one was still busy at its first connect
    placed = {name: stack.cluster.where(stack.device(name)) for name in HOME}
    assert all(len(nodes) == 1 for nodes in placed.values()), placed
    assert len({nodes[0] for nodes in placed.values()}) >= 2, placed
    release = stack.release()
    rollout_id = stack.client.deploy(ReleaseRef.parse(release), stack.fleet).rollout_id
    assert stack.finished(rollout_id, 120) == "succeeded", stack.logs()
    stack.converged(release)


def test_the_retained_desired_states_are_on_every_node(stack: Stack) -> None:
    want = {topics.desired(stack.device(name)) for name in HOME}
    seen = [retained(node.mqtt_port, sorted(want)) for node in stack.cluster.nodes]
    for got in seen:
        assert set(got) == want
        assert all(payload for payload in got.values())
    assert seen[0] == seen[1] == seen[2]  # the same bytes, whichever node is asked


def test_a_killed_agent_leaves_its_will_and_catches_up_on_another_node(stack: Stack) -> None:
    stack.agents.pop("d3").process.signal(signal.SIGKILL)
    wait(lambda: not stack.states()["d3"][1], 60, "the last will (d3 offline)", stack)

    release = stack.release()  # while d3 is away
    rollout_id = stack.client.deploy(ReleaseRef.parse(release), stack.fleet).rollout_id
    wait(
        lambda: all(stack.states()[n][0] == release for n in ("d0", "d1", "d2")),
        120,
        "the online devices to converge",
        stack,
    )
    assert stack.phase(rollout_id) not in FINISHED  # it waits for d3

    stack.start_agent("d3", first_node=0)  # back on another node than before
    assert stack.finished(rollout_id, 120) == "succeeded", stack.logs()
    stack.converged(release)
    assert stack.cluster.where(stack.device("d3")) == ["n0"]


def test_a_node_killed_mid_rollout_its_devices_move_and_the_rollout_completes(
    stack: Stack,
) -> None:
    on_node_1 = [name for name in HOME if stack.cluster.where(stack.device(name)) == ["n1"]]
    assert on_node_1, "no device on the node to kill"
    release = stack.release()
    rollout_id = stack.client.deploy(ReleaseRef.parse(release), stack.fleet).rollout_id
    wait(lambda: stack.phase(rollout_id) != "pending", 30, "the rollout to start", stack)
    assert stack.phase(rollout_id) not in FINISHED  # every download takes INSTALL_S
    stack.cluster.nodes[1].kill()

    assert stack.finished(rollout_id, RECOVER_S) == "succeeded", stack.logs()
    stack.converged(release)
    for name in on_node_1:
        assert stack.cluster.where(stack.device(name)) in (["n0"], ["n2"]), name


def test_a_node_back_rejoins_and_the_controllers_node_killed_mid_rollout(stack: Stack) -> None:
    stack.cluster.restart(1)
    release = stack.release()
    rollout_id = stack.client.deploy(ReleaseRef.parse(release), stack.fleet).rollout_id
    wait(lambda: stack.phase(rollout_id) != "pending", 30, "the rollout to start", stack)
    assert stack.phase(rollout_id) not in FINISHED
    stack.cluster.nodes[0].kill()  # the controller's node, and d0's

    assert stack.finished(rollout_id, RECOVER_S) == "succeeded", stack.logs()
    stack.converged(release)
    assert stack.cluster.where(stack.device("d0")) in (["n1"], ["n2"])


def retained(port: int, wanted: list[str], timeout: float = 30.0) -> dict[str, bytes]:
    """The retained messages on ``wanted`` topics, as a new client on ``port`` gets them."""
    got: dict[str, bytes] = {}
    c = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"retained-{uuid.uuid4().hex[:8]}",
        clean_session=True,
    )

    def on_message(_c: mqtt.Client, _u: object, m: mqtt.MQTTMessage) -> None:
        if m.retain:
            got[m.topic] = bytes(m.payload)

    c.on_message = on_message
    c.on_connect = lambda cl, _u, _f, _rc, _p: cl.subscribe([(t, 1) for t in wanted])
    c.connect("127.0.0.1", port, keepalive=10)
    c.loop_start()
    try:
        deadline = time.monotonic() + timeout
        while len(got) < len(wanted) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        c.disconnect()
        c.loop_stop()
    return got
