"""A real fleet under a bad day: the chaos harness behind ``bench/chaos.py`` and ``tests/chaos``.

Real processes throughout: a Mosquitto of its own (persistence off, as Mosquitto ships, so a
restart loses every retained message), an ``edge-controller`` and N ``edge-agent`` processes
started the way ``edgectl demo`` starts them. The harness kills the broker (SIGKILL) at random
points of rollouts and brings it back, keeps a device offline across a broker restart, and
floods every topic with malformed and forged messages, and reports what it saw.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.agent import failpoints
from edgefleet.common import rolloutwords, topics, wire
from edgefleet.common import types as t
from edgefleet.common.rpc import RpcFailed
from edgefleet.demo import digits
from edgefleet.demo.processes import Processes, free_port
from edgefleet.demo.stack import (
    Agent,
    AgentSpec,
    Controller,
    mosquitto_binary,
    start_agents,
    start_controller,
)
from edgefleet.edgectl.client import ControllerClient
from edgefleet.v1 import inference_pb2, inference_pb2_grpc

FINISHED = ("succeeded", "rolled_back")
INSTALL_S = 1.5  # each agent's download stalls this long: installs take a while, as on a device


class Broker:
    """Mosquitto on a fixed port, persistence off; ``kill`` is SIGKILL, ``start`` brings it back."""

    def __init__(self, workdir: Path) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
        self.binary = binary
        self.port = free_port()
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "max_queued_messages 100000\n" + ("user root\n" if os.geteuid() == 0 else "")
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None


@dataclass
class ChaosFleet:
    """``with ChaosFleet(workdir, devices=6) as f: ...``"""

    workdir: Path
    devices: int = 6
    fleet: str = "chaos"
    broker: Broker = field(init=False)
    procs: Processes = field(init=False)
    controller: Controller = field(init=False)
    client: ControllerClient = field(init=False)
    agents: dict[str, Agent] = field(init=False, default_factory=dict)
    trusted: Path = field(init=False)
    _versions: int = field(init=False, default=0)

    def __enter__(self) -> ChaosFleet:
        self.broker = Broker(self.workdir / "broker")
        self.broker.start()
        self.procs = Processes(self.workdir / "logs")
        self.procs.__enter__()
        try:
            self.controller = start_controller(
                self.procs, self.workdir / "controller", mqtt_url=self.broker.url, insecure=True
            )
            self.client = ControllerClient(self.controller.api, token=self.controller.admin_token())
            key = self.client.init_key()
            self.trusted = self.workdir / "trusted.pem"
            self.trusted.write_text(key.public_key_pem)
            model = digits.train(digits.load_data(), hidden=16, max_iter=50)
            self.client.upload_model([model.onnx_bytes], name="digits", size=len(model.onnx_bytes))
            self.start_agents([f"{self.fleet}-{i}" for i in range(self.devices)])
            wait(lambda: len(self.client.list_devices(self.fleet)) == self.devices, 30, "devices")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if hasattr(self, "client"):
            self.client.close()
        self.procs.__exit__(None, None, None)
        self.broker.kill()

    def start_agents(self, ids: list[str]) -> None:
        """Start agents whose every download takes ``INSTALL_S`` (a failpoint), so that a broker
        killed at a random point lands inside installs, not after them."""
        before = os.environ.get(failpoints.ENV)
        os.environ[failpoints.ENV] = f"fetch_chunk=sleep:{INSTALL_S:g}"
        try:
            started = start_agents(
                self.procs,
                [AgentSpec(d, self.fleet) for d in ids],
                workdir=self.workdir,
                mqtt_url=self.broker.url,
                controller=self.controller.address,
                trusted_key=self.trusted,
                insecure=True,
            )
        finally:
            if before is None:
                os.environ.pop(failpoints.ENV, None)
            else:
                os.environ[failpoints.ENV] = before
        for agent in started:
            self.agents[agent.device_id] = agent

    def kill_agent(self, device_id: str) -> None:
        agent = self.agents.pop(device_id)
        agent.process.signal(signal.SIGKILL)
        agent.process.popen.wait(10)

    def next_release(self) -> str:
        self._versions += 1
        version = f"1.0.{self._versions}"
        self.client.create_release("digits", version=version)
        return f"digits:{version}"

    def deploy(self, release: str, *, timeout: float = 60.0) -> str:
        """Deploy; while the controller is still reconnecting to a restarted broker it refuses
        (UNAVAILABLE, nothing written), so try again until it takes the deploy."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.client.deploy(release, self.fleet).rollout_id
            except RpcFailed as exc:
                if exc.code != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def phase(self, rollout_id: str) -> str:
        return rolloutwords.phase_word(self.client.get_rollout(rollout_id).rollout_phase)

    def wait_finished(self, rollout_id: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                phase = self.phase(rollout_id)
            except Exception:  # the controller is reachable; a failed poll is retried
                phase = ""
            if phase in FINISHED:
                return phase
            time.sleep(0.2)
        return self.phase(rollout_id)

    def snapshot(self) -> dict[str, tuple[object, ...]]:
        """What an operator sees of the fleet, minus what moves on its own (last seen,
        telemetry): per device its registration and state, per rollout its phase."""
        seen: dict[str, tuple[object, ...]] = {}
        for d in self.client.list_devices():
            seen[f"device/{d.device_id}"] = (
                d.fleet, d.phase, d.active_release, d.previous_release, d.generation_applied,
                d.generation_desired, d.last_error, d.online, d.predict_endpoint,
            )  # fmt: skip
        for r in self.client.list_rollouts(limit=500):
            seen[f"rollout/{r.rollout_id}"] = (
                rolloutwords.phase_word(r.rollout_phase),
                r.release,
                r.fleet,
            )
        for device_id, agent in sorted(self.agents.items()):
            with grpc.insecure_channel(agent.predict_endpoint) as channel:
                info = inference_pb2_grpc.InferenceServiceStub(channel).ModelInfo(
                    inference_pb2.ModelInfoRequest(), timeout=10
                )
            seen[f"neighbours/{device_id}"] = tuple(
                (n.device_id, n.endpoint, n.release, n.online) for n in info.neighbours
            )
        return seen

    def neighbours_agree(self, timeout: float = 60.0) -> None:
        """Wait until every agent's neighbour table shows every other agent online at the
        endpoint it serves on now (after restarts, presence and the signed roster catch up)."""
        want = {d: a.predict_endpoint for d, a in self.agents.items()}

        def agree() -> bool:
            snap = self.snapshot()
            for device_id in self.agents:
                seen = {n[0]: n[1] for n in snap[f"neighbours/{device_id}"] if n[3]}  # type: ignore[index]
                if seen != {d: e for d, e in want.items() if d != device_id}:
                    return False
            return True

        wait(agree, timeout, "every neighbour table to show the fleet as it is")

    def settled(self, marker: str, device_id: str, timeout: float = 30.0) -> None:
        """Publish one well-formed event after whatever was sent before it and wait until the
        controller lists it: the controller has taken everything sent before (one connection
        keeps order; the ingest queue is FIFO)."""
        event = t.DeviceEvent(device_id=device_id, kind="chaos_marker", message=marker)
        flood(self, [(topics.events(device_id), wire.event_to_pb(event).SerializeToString())])
        wait(
            lambda: any(
                e.message == marker for e in self.client.list_events(device_id=device_id, limit=50)
            ),
            timeout,
            "the controller to take the flood",
        )


def wait(probe: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(0.2)
    raise TimeoutError(f"timed out waiting for {what}")


@dataclass(frozen=True)
class RestartRun:
    release: str
    phase: str
    outage_at_s: float  # after the deploy
    mid_rollout: bool  # the rollout had not finished when the broker died
    converged_after_broker_s: float  # from the broker's return to the rollout's end


def rollout_through_a_broker_restart(
    fleet: ChaosFleet, rng: random.Random, *, outage_s: float = 3.0, timeout_s: float = 60.0
) -> RestartRun:
    """Deploy the next release, SIGKILL the broker at a random point of the rollout, bring it
    back ``outage_s`` later, and time the rollout's end from the broker's return."""
    release = fleet.next_release()
    rollout_id = fleet.deploy(release)
    at = rng.uniform(0.0, INSTALL_S + 0.5)
    time.sleep(at)
    mid = fleet.phase(rollout_id) not in FINISHED
    fleet.broker.kill()
    time.sleep(outage_s)
    fleet.broker.start()
    back = time.monotonic()
    phase = fleet.wait_finished(rollout_id, timeout_s)
    return RestartRun(release, phase, at, mid, time.monotonic() - back)


def offline_across_a_broker_restart(fleet: ChaosFleet, *, timeout_s: float = 60.0) -> float:
    """One device is down while a rollout starts and the broker restarts (losing every retained
    message); it comes back afterwards. Returns seconds from its return to the rollout's end;
    raises when the rollout does not succeed."""
    device = sorted(fleet.agents)[0]
    fleet.kill_agent(device)
    release = fleet.next_release()
    rollout_id = fleet.deploy(release)
    others = [d for d in fleet.agents if d != device]
    wait(
        lambda: all(
            x.active_release == release
            for x in fleet.client.list_devices(fleet.fleet)
            if x.device_id in others
        ),
        timeout_s,
        "the online devices to converge",
    )
    fleet.broker.kill()
    time.sleep(1.0)
    fleet.broker.start()
    if not _retained_desired(fleet, device, timeout_s):
        raise AssertionError(f"no desired state for {device} on the broker after its restart")
    back = time.monotonic()
    fleet.start_agents([device])
    phase = fleet.wait_finished(rollout_id, timeout_s)
    if phase != "succeeded":
        raise AssertionError(f"rollout {rollout_id} ended {phase} with {device} back")
    return time.monotonic() - back


def _retained_desired(fleet: ChaosFleet, device_id: str, timeout: float = 20.0) -> bool:
    """The broker holds a retained desired state for ``device_id`` again: after a restart with
    persistence off that can only be the controller's re-publishing."""
    got: list[bytes] = []
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{random.getrandbits(32):x}")
    c.on_message = lambda _c, _u, m: got.append(bytes(m.payload))
    deadline = time.monotonic() + timeout
    try:
        c.connect("127.0.0.1", fleet.broker.port)
        c.loop_start()
        while not got and time.monotonic() < deadline:
            c.subscribe(topics.desired(device_id), qos=1)  # again: retained comes on subscribe
            time.sleep(0.5)
    finally:
        c.disconnect()
        c.loop_stop()
    return bool(got)


def malformed_messages(
    fleet: ChaosFleet, device_ids: list[str], n: int, seed: int = 7
) -> list[tuple[str, bytes]]:
    """``n`` messages that must change nothing: garbage, truncated and oversized payloads,
    valid messages about another device than their topic names, another fleet, a generation
    past 2**62, stale status sequence numbers, bogus endpoints and control characters."""
    rng = random.Random(seed)
    other = "not-" + fleet.fleet
    out: list[tuple[str, bytes]] = []
    kinds = 10
    for i in range(n):
        d = rng.choice(device_ids)
        wrong = rng.choice([x for x in device_ids if x != d] or ["ghost"])
        k = i % kinds
        status = t.DeviceStatus(device_id=d, fleet=fleet.fleet, phase=t.InstallPhase.FAILED)
        if k == 0:
            out.append((topics.status(d), rng.randbytes(rng.randint(1, 64))))
        elif k == 1:
            payload = wire.status_to_pb(
                t.DeviceStatus(device_id=wrong, fleet=fleet.fleet, phase=t.InstallPhase.FAILED)
            ).SerializeToString()
            out.append((topics.status(d), payload))
        elif k == 2:
            msg = wire.status_to_pb(status)
            msg.generation_applied = 2**63 - 1
            msg.seq = 2**63
            out.append((topics.status(d), msg.SerializeToString()))
        elif k == 3:
            msg = wire.status_to_pb(status)
            msg.seq = 1  # far older than any agent's counter (the wall clock in µs)
            msg.last_error = "stale"
            out.append((topics.status(d), msg.SerializeToString()))
        elif k == 4:
            msg = wire.status_to_pb(status)
            msg.seq = 2**61
            msg.predict_endpoint = "evil\n:99999"
            out.append((topics.status(d), msg.SerializeToString()))
        elif k == 5:
            presence = t.Presence(device_id=wrong, fleet=fleet.fleet, online=False)
            payload = wire.presence_to_pb(presence).SerializeToString()
            out.append((topics.presence(fleet.fleet, d), payload))
        elif k == 6:
            presence = t.Presence(device_id=d, fleet=other, online=False)
            payload = wire.presence_to_pb(presence).SerializeToString()
            out.append((topics.presence(fleet.fleet, d), payload))
        elif k == 7:
            out.append((topics.presence(fleet.fleet, d), rng.randbytes(rng.randint(1, 64))))
        elif k == 8:
            msg = wire.presence_to_pb(
                t.Presence(device_id=d, fleet=fleet.fleet, online=True, predict_endpoint="x")
            )
            msg.predict_endpoint = "\x1b[31m;rm -rf /:1"
            out.append((topics.presence(fleet.fleet, d), msg.SerializeToString()))
        else:
            out.append((topics.events(d), rng.randbytes(rng.randint(1, 64))))
    return out


def flood(fleet: ChaosFleet, messages: list[tuple[str, bytes]]) -> None:
    """Publish every message at QoS 1 (not retained: retained garbage would be someone else's
    problem on the next connect), and wait for the broker to take each one."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="chaos-flood")
    c.connect("127.0.0.1", fleet.broker.port)
    c.loop_start()
    try:
        infos = [c.publish(topic, payload, qos=1) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(timeout=30)
    finally:
        c.disconnect()
        c.loop_stop()
