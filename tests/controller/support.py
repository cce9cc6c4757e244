"""Helpers for the controller tests: a running controller, a device that speaks MQTT with paho,
gRPC upload and polling. No fakes: real broker, real gRPC server, real SQLite."""

from __future__ import annotations

import queue
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import grpc
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.agent.identity import IdentityFiles
from edgefleet.common import desired, rolloutwords, rpc, topics, wire
from edgefleet.common import types as t
from edgefleet.common.mqttclient import BrokerUrl
from edgefleet.common.signing import TrustStore, load_public_keys
from edgefleet.controller.config import (
    ApiSettings,
    GrpcSettings,
    MqttSettings,
    RegistrySettings,
    RolloutSettings,
    Settings,
)
from edgefleet.controller.server import API_CA_FILE, Controller
from edgefleet.edgectl.client import authorized
from edgefleet.v1 import controller_pb2 as pb
from edgefleet.v1 import controller_pb2_grpc
from tests.controller import databases

T = TypeVar("T")
DEADLINE = 10.0
ACL_DEADLINE = 30.0  # until a busy machine's Mosquitto has reread its ACL (SIGHUP)
UPLOAD_DEADLINE = 60.0


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def settings(
    data_dir: Path, broker_url: str, *, max_model_bytes: int = 64 << 20, tick_s: float = 0.05
) -> Settings:
    return Settings(
        data_dir=data_dir,
        db_url=databases.fresh_url(),  # EDGEFLEET_TEST_DB: a fresh PostgreSQL database
        grpc=GrpcSettings(bind="127.0.0.1:0", grace_s=0.5),
        api=ApiSettings(bind="127.0.0.1:0"),
        mqtt=MqttSettings(url=broker_url, client_id=unique("ctl")),
        registry=RegistrySettings(max_model_bytes=max_model_bytes),
        rollouts=RolloutSettings(tick_s=tick_s),
    )


@dataclass
class Running:
    controller: Controller
    channel: grpc.Channel
    stub: controller_pb2_grpc.ControllerServiceStub

    @property
    def address(self) -> str:
        """Where devices reach it (ArtifactService)."""
        return self.controller.address

    @property
    def api(self) -> str:
        """The operator API (ControllerService)."""
        return self.controller.api_address

    @property
    def api_ca(self) -> Path | None:
        """With ``grpc.tls``: the CA bundle the operator API's certificate chains to (the
        ``api-ca.pem`` it writes for edgectl); None: the API is plaintext."""
        path = self.controller.settings.state_file.parent / API_CA_FILE
        return path if self.controller.settings.grpc.tls else None

    @property
    def token(self) -> str:
        """The admin token the controller made on its first start."""
        return self.controller.settings.admin_token_file.read_text().strip()

    def stop(self) -> None:
        self.channel.close()
        self.controller.stop()


def api_tls(controller: Controller) -> rpc.ClientTls | None:
    """What a client of ``controller``'s operator API trusts: TLS on the fleet CA with
    ``grpc.tls``, else plaintext (None)."""
    if not controller.settings.grpc.tls or controller.enrollment is None:
        return None
    return rpc.ClientTls(ca_pem=controller.enrollment.ca.bundle_pem)


def start(s: Settings, *, clock: Callable[[], float] = time.time) -> Running:
    controller = Controller(s, clock=clock)
    controller.start()
    assert controller.mqtt.wait_connected(10), "controller did not reach the broker"
    token = s.admin_token_file.read_text().strip()
    channel = authorized(rpc.channel(controller.api_address, tls=api_tls(controller)), token)
    return Running(controller, channel, controller_pb2_grpc.ControllerServiceStub(channel))


def upload(
    stub: controller_pb2_grpc.ControllerServiceStub, name: str, data: bytes, *, chunk: int = 4096
) -> pb.RegisteredModel:
    def parts() -> Iterator[pb.UploadModelRequest]:
        yield pb.UploadModelRequest(header=pb.UploadHeader(name=name, size=len(data)))
        for i in range(0, len(data), chunk):
            yield pb.UploadModelRequest(chunk=data[i : i + chunk])

    # The controller inspects the model in a sandbox process (a fresh interpreter) before it
    # answers: on a machine busy with the rest of the suite that alone can outlast DEADLINE.
    return stub.UploadModel(parts(), timeout=UPLOAD_DEADLINE)


def trust(stub: controller_pb2_grpc.ControllerServiceStub) -> TrustStore:
    keys = stub.ListKeys(pb.ListKeysRequest(), timeout=DEADLINE).keys
    return TrustStore(k for info in keys for k in load_public_keys(info.public_key_pem.encode()))


def all_devices(
    stub: controller_pb2_grpc.ControllerServiceStub, fleet: str = "", *, timeout: float = 10.0
) -> list[pb.DeviceInfo]:
    """Every device of ``fleet`` (all fleets: ""), page after page: a listing of every fleet on
    the session broker can hold more devices than one page."""
    out: list[pb.DeviceInfo] = []
    token = ""
    while True:
        request = pb.ListDevicesRequest(fleet=fleet, page_size=1000, page_token=token)
        page = stub.ListDevices(request, timeout=timeout)
        out.extend(page.devices)
        token = page.next_page_token
        if not token:
            return out


def eventually(probe: Callable[[], T | None], *, timeout: float = 10.0, what: str = "") -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or probe}")


@dataclass(frozen=True)
class Failure:
    code: grpc.StatusCode
    message: str

    def details(self) -> str:
        return self.message


def rpc_error(call: Callable[[], object]) -> Failure:
    """The status a call failed with (it must fail)."""
    try:
        call()
    except grpc.RpcError as exc:
        failed = rpc.error_from_rpc(exc, target="controller")
        return Failure(failed.code, failed.detail)
    raise AssertionError("the call succeeded")


def mqtt_client(
    broker_url: str, client_id: str, identity: IdentityFiles | None
) -> tuple[mqtt.Client, BrokerUrl]:
    """A paho client for ``broker_url``; with ``identity`` (an enrolled device's files) TLS as
    the agent's session sets it: the fleet CA as the root, the device's certificate and key
    (an mTLS broker takes the certificate's CN as username and client id)."""
    broker = BrokerUrl.parse(broker_url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    if identity is not None:
        client.tls_set_context(identity_tls(identity))
    return client, broker


def identity_tls(identity: IdentityFiles) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(identity.ca))
    context.load_cert_chain(str(identity.cert), str(identity.key))
    return context


def subscribed(client: mqtt.Client, topic: str) -> None:
    """Subscribe to ``topic`` (QoS 1); returns once the broker answered."""
    done = queue.Queue[int]()
    client.on_subscribe = lambda *_args: done.put(1)
    client.subscribe(topic, qos=1)
    done.get(timeout=DEADLINE)


def announce(
    client: mqtt.Client, device_id: str, fleet: str, *, timeout: float = ACL_DEADLINE
) -> None:
    """Publish the device's presence (online, as an agent does on connect) until it comes back
    on its fleet's presence topic: on an mTLS broker, the proof that the ACL it reread after
    an enrollment lets this identity write its own topics and read its fleet's (Mosquitto
    grants every SUBSCRIBE and drops what the ACL refuses: what the device sent before is
    lost)."""
    topic = topics.presence(fleet, device_id)
    back = threading.Event()
    client.message_callback_add(topic, lambda *_args: back.set())  # not the client's on_message
    subscribed(client, topics.fleet_presence(fleet))
    presence = t.Presence(device_id, fleet, online=True, at_ms=int(time.time() * 1000))
    payload = wire.presence_to_pb(presence).SerializeToString()
    deadline = time.monotonic() + timeout
    while True:
        client.publish(topic, payload, qos=1)
        if back.wait(0.5):
            break
        if time.monotonic() >= deadline:
            raise AssertionError(f"{device_id}'s presence never came back: the broker's ACL")
    client.unsubscribe(topics.fleet_presence(fleet))


class Device:
    """A paho client standing in for an agent: publishes reports, collects what it receives.

    With ``identity`` (an enrolled device) it connects to an mTLS broker as that device and
    returns once the broker's ACL lets it in (``announce``)."""

    def __init__(
        self,
        broker_url: str,
        *,
        client_id: str | None = None,
        identity: IdentityFiles | None = None,
    ) -> None:
        self.received: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.client, broker = mqtt_client(broker_url, client_id or unique("dev"), identity)
        self.client.on_message = lambda _c, _u, msg: self.received.put(msg)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        if identity is not None:
            ident = identity.identity()
            announce(self.client, ident.device_id, ident.fleet)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False, qos: int = 1) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout=5)

    def status(self, device_id: str, fleet: str, **fields: object) -> None:
        status = t.DeviceStatus(device_id=device_id, fleet=fleet, phase=t.InstallPhase.IDLE)
        status = t.DeviceStatus(**{**status.__dict__, **fields})
        payload = wire.status_to_pb(status).SerializeToString()
        self.publish(topics.status(device_id), payload, retain=True)

    def subscribe(self, topic: str) -> None:
        done = queue.Queue[int]()
        self.client.on_subscribe = lambda *_args: done.put(1)
        self.client.subscribe(topic, qos=1)
        done.get(timeout=5)

    def next_message(self, timeout: float = 10.0) -> mqtt.MQTTMessage:
        return self.received.get(timeout=timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# --- simulated agents, for rollouts --------------------------------------------------------

OLD, NEW, NEWER = "digits:1.0.0", "digits:1.1.0", "digits:1.2.0"


def releases(stub: controller_pb2_grpc.ControllerServiceStub, onnx: bytes, *versions: str) -> None:
    """A signing key, the model, and one release per version (all of the same model)."""
    stub.InitKey(pb.InitKeyRequest(), timeout=DEADLINE)
    upload(stub, "digits", onnx)
    for v in versions:
        stub.CreateRelease(pb.CreateReleaseRequest(name="digits", version=v), timeout=DEADLINE)


@dataclass(frozen=True)
class Outcome:
    """What a simulated agent makes of a desired state."""

    phase: t.InstallPhase = t.InstallPhase.ACTIVE  # or FAILED / ROLLED_BACK (keeps the old one)
    error: str = ""
    p95_ms: float = 2.0  # reported on the release it then runs
    hold: bool = False  # take it, say nothing until ``go``


def works(_release: str) -> Outcome:
    return Outcome()


class SimAgent:
    """A device that follows the agent protocol over a real broker: it opens every signed
    desired state with the controller's public keys, applies a newer generation as ``behaviour``
    says, and publishes telemetry (first) and a retained status reflecting the outcome."""

    def __init__(
        self,
        broker_url: str,
        device_id: str,
        fleet: str,
        trust: TrustStore,
        *,
        active: str = OLD,
        previous: str = "",
        generation: int = 1,
        baseline_p95_ms: float = 2.0,
        behaviour: Callable[[str], Outcome] = works,
        identity: IdentityFiles | None = None,
    ) -> None:
        self.broker_url, self.identity = broker_url, identity  # identity: see Device
        self.device_id, self.fleet, self.trust = device_id, fleet, trust
        self.active, self.previous, self.applied = active, previous, generation
        self.behaviour = behaviour
        self.received: list[t.DesiredState] = []
        self.held: t.DesiredState | None = None
        self._p95 = baseline_p95_ms
        self._lock = threading.Lock()
        self._client: mqtt.Client | None = None

    @property
    def generations(self) -> list[tuple[int, str]]:
        with self._lock:
            return [(d.generation, str(d.release)) for d in self.received]

    def connect(self) -> SimAgent:
        """Connect, subscribe to its desired state (enrolled: once the broker's ACL lets it
        in, ``announce``), then report as it is."""
        client, broker = mqtt_client(self.broker_url, unique(self.device_id), self.identity)
        client.on_message = self._on_desired
        client.connect(broker.host, broker.port)
        client.loop_start()
        self._client = client
        subscribed(client, topics.desired(self.device_id))
        if self.identity is not None:
            announce(client, self.device_id, self.fleet)
        self._report(self.active, p95_ms=self._p95)
        return self

    def close(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None

    def go(self, outcome: Outcome | None = None) -> None:
        """Apply the held desired state (as ``outcome`` says, or as ``behaviour`` says)."""
        with self._lock:
            state, self.held = self.held, None
        assert state is not None, f"{self.device_id} holds nothing"
        self._apply(state, outcome or replace(self.behaviour(str(state.release)), hold=False))

    def _on_desired(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        state = desired.open_desired(bytes(msg.payload), self.trust, device_id=self.device_id)
        with self._lock:
            self.received.append(state)
            if state.generation <= self.applied:
                return  # the agent ignores what it applied already (retained redelivery)
        outcome = self.behaviour(str(state.release))
        if outcome.hold:
            with self._lock:
                self.held = state
            return
        self._apply(state, outcome)

    def _apply(self, state: t.DesiredState, outcome: Outcome) -> None:
        release = str(state.release)
        with self._lock:
            self.applied = max(self.applied, state.generation)
            switched = outcome.phase in (t.InstallPhase.ACTIVE, t.InstallPhase.HEALTH_CHECK)
            if switched and release != self.active:
                self.previous, self.active = self.active, release
        self._report(release, p95_ms=outcome.p95_ms, phase=outcome.phase, error=outcome.error)

    def _report(
        self,
        measured: str,
        *,
        p95_ms: float,
        phase: t.InstallPhase = t.InstallPhase.ACTIVE,
        error: str = "",
    ) -> None:
        assert self._client is not None
        if self.active and phase is t.InstallPhase.ACTIVE:
            x = t.Telemetry(
                device_id=self.device_id, release=measured, window_s=10.0, requests=200,
                errors=0, p50_ms=p95_ms / 2, p95_ms=p95_ms, p99_ms=p95_ms * 1.2,
            )  # fmt: skip
            self._client.publish(topics.telemetry(self.device_id), wire_bytes(x), qos=0)
        if not self.active and phase is t.InstallPhase.ACTIVE:
            phase = t.InstallPhase.IDLE  # a fresh device, nothing installed yet
        status = t.DeviceStatus(
            device_id=self.device_id, fleet=self.fleet, phase=phase,
            active_release=self.active, previous_release=self.previous,
            generation_applied=self.applied, last_error=error,
        )  # fmt: skip
        self._client.publish(topics.status(self.device_id), wire_bytes(status), qos=1, retain=True)


def wire_bytes(report: t.Telemetry | t.DeviceStatus) -> bytes:
    if isinstance(report, t.Telemetry):
        return wire.telemetry_to_pb(report).SerializeToString()
    return wire.status_to_pb(report).SerializeToString()


def get_rollout(stub: controller_pb2_grpc.ControllerServiceStub, rollout_id: str) -> pb.RolloutInfo:
    return stub.GetRollout(pb.RolloutRef(rollout_id=rollout_id), timeout=DEADLINE)


def strategy(kind: str = "", **fields: Any) -> pb.RolloutStrategy:
    """A deploy's strategy as edgectl sends it, the kind by its word (``canary``), unless
    ``strategy_kind`` gives its value."""
    unset = pb.STRATEGY_KIND_UNSPECIFIED
    fields.setdefault("strategy_kind", rolloutwords.kind_value(kind) if kind else unset)
    return pb.RolloutStrategy(**fields)


def wait_phase(
    stub: controller_pb2_grpc.ControllerServiceStub,
    rollout_id: str,
    *phases: str,
    timeout: float = 15.0,
) -> pb.RolloutInfo:
    last: list[pb.RolloutInfo] = []

    def probe() -> pb.RolloutInfo | None:
        info = get_rollout(stub, rollout_id)
        last[:] = [info]
        return info if rolloutwords.phase_word(info.rollout_phase) in phases else None

    try:
        return eventually(probe, timeout=timeout, what=f"rollout {rollout_id} to be {phases}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last: {last[0] if last else None}") from None


def device_states(info: pb.RolloutInfo) -> dict[str, str]:
    return {d.device_id: rolloutwords.target_state_word(d.target_state) for d in info.devices}


class ManualClock:
    """Wall-clock seconds that move only when a test says so."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Agents:
    """Simulated agents of one test; ``close`` disconnects them all."""

    def __init__(self, broker_url: str) -> None:
        self.broker_url = broker_url
        self.made: list[SimAgent] = []

    def fleet(
        self, ctl: Running, n: int, *, fleet: str = "", **kw: Any
    ) -> tuple[str, list[SimAgent]]:
        """``n`` connected agents ``<fleet>-d0``... (in rollout order), registered."""
        fleet = fleet or unique("fleet")
        keys = trust(ctl.stub)
        agents = [SimAgent(self.broker_url, f"{fleet}-d{i}", fleet, keys, **kw) for i in range(n)]
        for a in agents:
            self.made.append(a.connect())
        eventually(
            lambda: len(ctl.stub.ListDevices(pb.ListDevicesRequest(fleet=fleet)).devices) == n,
            what=f"{n} devices of {fleet} registered",
        )
        return fleet, agents

    def close(self) -> None:
        for a in self.made:
            a.close()


def ticked(ctl: Running, agents: Agents) -> None:
    """Return once the rollout driver has run a whole tick that began after this call: the
    positive proof that whatever a tick would have done by now, it has done (never a sleep).

    Each tick steps the rollouts unfinished at its start, one after another. A probe rollout
    (a fleet of one simulated device of its own) succeeds in a tick that began after it was
    made; a second probe, made once the first succeeded, succeeds in a later tick still, which
    began only when the first probe's tick, every rollout's step included, was over."""
    for _ in range(2):
        fleet, _ = agents.fleet(ctl, 1)
        answer = ctl.stub.Deploy(pb.DeployRequest(release=NEW, fleet=fleet), timeout=DEADLINE)
        wait_phase(ctl.stub, answer.rollout_id, "succeeded")


def reported(
    ctl: Running, device_id: str, fleet: str, phase: t.InstallPhase, *, generation: int
) -> None:
    """Wait until the controller has stored ``device_id``'s report of ``phase`` at
    ``generation``."""
    want = wire.phase_to_pb(phase)
    eventually(
        lambda: any(
            d.device_id == device_id and d.phase == want and d.generation_applied == generation
            for d in ctl.stub.ListDevices(
                pb.ListDevicesRequest(fleet=fleet), timeout=DEADLINE
            ).devices
        ),
        what=f"the controller to store {device_id}'s {phase} report",
    )
