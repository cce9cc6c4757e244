"""Several controllers on one PostgreSQL: all serve the API, one drives; SIGKILL of the driving
one mid-rollout and another takes over, the rollout completes, and no device ever gets two
different desired states with one generation, nor one step twice.

Real parts: two ``edge-controller`` processes sharing a data dir (keys, blobs, CA: a shared
volume) and a database on the machine's PostgreSQL, a real Mosquitto, simulated agents that
follow the agent protocol (each keeps every desired state it received), and a raw MQTT client
recording every desired state of the test's devices on the wire.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from edgefleet.common import desired, rpc, topics
from edgefleet.common.signing import TrustStore, load_public_keys
from edgefleet.demo.digits import TrainedModel
from edgefleet.demo.processes import Managed, Processes, script, wait_for_json
from edgefleet.edgectl.client import ControllerClient, authorized
from edgefleet.v1 import controller_pb2 as pb
from edgefleet.v1 import controller_pb2_grpc
from tests.conftest import Broker, free_port
from tests.controller import databases, support

pytestmark = [
    pytest.mark.slow,
    pytest.mark.e2e,
]
PG = os.environ.get(databases.ENV) or "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
# Each call's deadline: generous, so a machine busy with the rest of the suite (an upload that
# validates the model, a poll while both replicas contend for the database) is never a failure.
RPC_S = 60.0


@pytest.fixture
def pg_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv(databases.ENV, PG)
    url = databases.fresh_url()  # skips when no PostgreSQL answers
    yield url
    databases.drop_all()


def spawn(procs: Processes, name: str, data_dir: Path, *, db: str, mqtt_url: str) -> str:
    """One replica; returns its operator API address once it is ready."""
    api = f"127.0.0.1:{free_port()}"
    argv = [
        *script("edge-controller", "edgefleet.controller.cli"), "run",
        "--data-dir", str(data_dir), "--db", db, "--mqtt", mqtt_url,
        "--grpc", f"127.0.0.1:{free_port()}", "--api", api,
        "--mqtt-client-id", f"controller-{name}", "--rollout-tick", "0.2",
        "--insecure",
    ]  # fmt: skip
    ready = data_dir / "controller.json"
    ready.unlink(missing_ok=True)
    proc = procs.spawn(name, argv, tier=1)
    deadline = time.monotonic() + 60
    while True:
        info = wait_for_json(ready, proc, timeout_s=60)
        if info.get("pid") == proc.popen.pid:
            return api
        assert time.monotonic() < deadline, proc.tail(30)
        time.sleep(0.05)


class Wire:
    """Every desired state the broker delivers for ``devices``, retained ones included, as
    (device, generation, release).

    It subscribes to exactly those devices' topics: the session broker holds the retained
    desired states of every earlier test, signed by other controllers' keys. paho runs
    ``on_message`` on its network thread and, by default, lets an exception there end that
    thread, so the callback only stores the raw message; ``states()`` opens them (in the test's
    thread, where a bad one fails the test with its reason)."""

    def __init__(self, broker: Broker, devices: list[str]) -> None:
        self._raw: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=support.unique("wire-recorder")
        )
        self._client.on_message = self._on
        granted: queue.Queue[list[ReasonCode]] = queue.Queue()
        self._client.on_subscribe = lambda _c, _u, _mid, codes, _p: granted.put(list(codes))
        self._client.connect("127.0.0.1", broker.port)
        self._client.loop_start()
        self._client.subscribe([(topics.desired(d), 1) for d in devices])
        codes = granted.get(timeout=30)  # SUBACK: from here on the broker delivers to it
        assert all(c.value == 1 for c in codes), f"subscriptions not granted at QoS 1: {codes}"

    def _on(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self._raw.append((msg.topic, bytes(msg.payload)))

    def states(self, trust: TrustStore) -> list[tuple[str, int, str]]:
        with self._lock:
            raw = list(self._raw)
        out = []
        for topic, payload in raw:
            device = topics.parse(topic).device_id
            state = desired.open_desired(payload, trust, device_id=device, at_any_time=True)
            out.append((device, state.generation, str(state.release)))
        return out

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def releases(stub: controller_pb2_grpc.ControllerServiceStub, onnx: bytes) -> TrustStore:
    """A signing key, the model, releases OLD and NEW of it; the controller's public keys."""
    stub.InitKey(pb.InitKeyRequest(), timeout=RPC_S)

    def parts() -> Iterator[pb.UploadModelRequest]:
        yield pb.UploadModelRequest(header=pb.UploadHeader(name="digits", size=len(onnx)))
        for i in range(0, len(onnx), 64 << 10):
            yield pb.UploadModelRequest(chunk=onnx[i : i + (64 << 10)])

    stub.UploadModel(parts(), timeout=RPC_S)
    for ref in (support.OLD, support.NEW):
        version = ref.partition(":")[2]
        stub.CreateRelease(pb.CreateReleaseRequest(name="digits", version=version), timeout=RPC_S)
    keys = stub.ListKeys(pb.ListKeysRequest(), timeout=RPC_S).keys
    return TrustStore(k for info in keys for k in load_public_keys(info.public_key_pem.encode()))


def logged(proc: Managed, line: str) -> bool:
    """Whether ``proc``'s whole log (not only its tail) has ``line``."""
    return proc.log.exists() and line in proc.log.read_text(errors="replace")


def succeeded(b: ControllerClient, rollout_id: str) -> pb.RolloutInfo | None:
    info = b.get_rollout(rollout_id)
    return info if info.rollout_phase == pb.ROLLOUT_PHASE_SUCCEEDED else None


def test_a_second_controller_takes_over_a_rollout_when_the_driving_one_dies(
    tmp_path: Path, broker: Broker, agents: support.Agents, digits_model: TrainedModel, pg_url: str
) -> None:
    data = tmp_path / "shared"
    with Processes(tmp_path / "logs") as procs:
        spawn(procs, "ctl-a", data, db=pg_url, mqtt_url=broker.url)
        a: Managed = procs.started[-1]
        api_b = spawn(procs, "ctl-b", data, db=pg_url, mqtt_url=broker.url)
        b_proc: Managed = procs.started[-1]
        token = (data / "admin.token").read_text().strip()
        with ControllerClient(api_b, token=token, deadline_s=RPC_S) as b:
            channel = authorized(rpc.channel(api_b), token)
            stub = controller_pb2_grpc.ControllerServiceStub(channel)
            keys = releases(stub, digits_model.onnx_bytes)
            fleet = support.unique("fleet")
            ids = [f"{fleet}-d{i}" for i in range(6)]
            # Listening before any device exists: nothing for these devices can go unseen.
            wire = Wire(broker, ids)
            try:
                devs = [support.SimAgent(broker.url, d, fleet, keys) for d in ids]
                agents.made += [d.connect() for d in devs]
                support.eventually(
                    lambda: len(b.list_devices(fleet)) == 6, timeout=60, what="6 devices registered"
                )
                # A, started first, took the lease; B stands by.
                support.eventually(
                    lambda: logged(a, "took the rollouts lease"), timeout=60, what="A leads"
                )
                support.eventually(
                    lambda: logged(b_proc, "held by"), timeout=60, what="B stands by"
                )
                assert not logged(b_proc, "took the rollouts lease")
                strategy = pb.RolloutStrategy(
                    strategy_kind=pb.STRATEGY_KIND_CANARY, canary="1", waves="50%", bake="2s"
                )
                started = stub.Deploy(
                    pb.DeployRequest(release=support.NEW, fleet=fleet, strategy=strategy),
                    timeout=RPC_S,
                )
                # Kill A once the canary is through.
                support.eventually(
                    lambda: b.get_rollout(started.rollout_id).step >= 1, timeout=60, what="wave 1"
                )
                a.signal(signal.SIGKILL)
                a.popen.wait(10)
                killed = time.monotonic()
                support.eventually(
                    lambda: logged(b_proc, "took the rollouts lease"),
                    timeout=60,
                    what="B to take the lease over",
                )
                took_over = time.monotonic() - killed
                info = support.eventually(
                    lambda: succeeded(b, started.rollout_id), timeout=120, what="success"
                )
                # Succeeded: every device reported the new release, so each got its desired
                # state; the recorder, a subscriber like them, gets it from the broker too.
                support.eventually(
                    lambda: {d for d, _, r in wire.states(keys) if r == support.NEW} == set(ids),
                    timeout=30,
                    what="the recorder to see the new release's desired state of every device",
                )
                seen = wire.states(keys)
            finally:
                wire.close()
                channel.close()
    # The lease lasts 8 s unrenewed: B takes over once it lapses (generous bound: a loaded
    # machine may stretch the ticks).
    assert took_over < 30, f"B took the lease {took_over:.1f}s after A died"
    assert list(info.step_sizes) == [1, 3, 6]
    # What went over the wire, and what each device itself received: no generation carries
    # two releases, and each device got the new release under exactly one generation.
    for where, states in [
        ("on the wire", seen),
        ("at the devices", [(d.device_id, g, r) for d in devs for g, r in d.generations]),
    ]:
        releases_by_generation: dict[tuple[str, int], set[str]] = {}
        for device, generation, release in states:
            releases_by_generation.setdefault((device, generation), set()).add(release)
        doubled = {k: v for k, v in releases_by_generation.items() if len(v) > 1}
        assert not doubled, f"two desired states with one generation {where}: {doubled}"
        new = {(d, g) for d, g, r in states if r == support.NEW}
        per_device = {d: sorted(g for dd, g in new if dd == d) for d in ids}
        assert all(len(gens) == 1 for gens in per_device.values()), f"{where}: {per_device}"
