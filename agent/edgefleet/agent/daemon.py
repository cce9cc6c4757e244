"""The agent process: wires the parts together and owns their threads.

Start order matters: restore the last good model, serve Predict (and /metrics), write
``agent.json``, and only then connect to MQTT, so a device whose broker is down keeps serving
while paho retries in the background. Threads, all named: paho's network loop, the worker
(``agent-worker``: the only one that installs), telemetry, the gRPC pool, the fast local
path's (``agent-fastpath``, one per connection), the metrics server.
MQTT handlers only put payloads on the worker's queue.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgefleet.agent import deltas, failpoints, runtime, variants
from edgefleet.agent.benchmarking import Benchmarker
from edgefleet.agent.config import (
    UNIX_PATH_MAX,
    AgentSettings,
    broker_url,
    predict_fast_socket_path,
    predict_socket_path,
)
from edgefleet.agent.containers import CONTAINER, ContainerRuntime, Containers
from edgefleet.agent.containerwatch import ContainerWatch
from edgefleet.agent.downloading import Downloader
from edgefleet.agent.enrolling import Renewer
from edgefleet.agent.failover import OwnState
from edgefleet.agent.fastserver import FastServer
from edgefleet.agent.identity import IdentityFiles, mqtt_tls_files
from edgefleet.agent.installing import Installer
from edgefleet.agent.journal import InstallJournal
from edgefleet.agent.ledger import Ledger
from edgefleet.agent.live import LiveStats
from edgefleet.agent.metrics import AgentMetrics
from edgefleet.agent.neighbours import Forwarder, NeighbourTable
from edgefleet.agent.outbox import Outbox
from edgefleet.agent.powering import PowerTap
from edgefleet.agent.predictor import Predictor
from edgefleet.agent.preparing import SlotPreparer
from edgefleet.agent.reporting import Reporter
from edgefleet.agent.restoring import restore
from edgefleet.agent.runtime import ModelRuntime
from edgefleet.agent.serving import (
    InferenceServer,
    InferenceServicer,
    PeerArtifactServicer,
    PeerServer,
    PeerServicer,
)
from edgefleet.agent.state import DeviceState, StateFile
from edgefleet.agent.store import SlotStore
from edgefleet.agent.switching import Switch
from edgefleet.agent.telemetry import TelemetryLoop
from edgefleet.agent.trusting import TrustKeeper
from edgefleet.agent.watching import HealthWatch
from edgefleet.common import rpc, topics, wire
from edgefleet.common import types as t
from edgefleet.common.artifacts import ArtifactServicer, atomic_write
from edgefleet.common.errors import InvalidInputError, MalformedMessageError
from edgefleet.common.mqttclient import MqttSession, Will
from edgefleet.common.signing import TrustStore

log = logging.getLogger(__name__)

_STOP = object()
FAST_SPARE_CONNECTIONS = 4
"""Fast-path connections allowed beyond ``predict_max_concurrent`` (idle pooled ones)."""


def _socket_path(path: Path | None, what: str = "Predict socket") -> Path | None:
    """A socket's path (``predict_socket_path``, ``predict_fast_socket_path``); the default one
    is skipped, with a warning, where the data dir's path is too long for a Unix socket (a
    given one too long is refused by ``validate``)."""
    if path is not None and len(str(path).encode()) > UNIX_PATH_MAX:
        log.warning("no %s: %s is too long for a Unix socket path", what, path)
        return None
    return path


def _fast_server(s: AgentSettings, servicer: InferenceServicer) -> FastServer | None:
    """The fast local path's server (not started), or None where it is off or skipped."""
    path = _socket_path(predict_fast_socket_path(s), "fast local path")
    if path is None:
        return None
    return FastServer(
        servicer,
        path,
        max_connections=s.serving.max_concurrent + FAST_SPARE_CONNECTIONS,
        max_message_bytes=s.serving.max_message_bytes,
    )


def _grpc_tls(s: AgentSettings, files: IdentityFiles) -> bool:
    """Whether gRPC to the controller and neighbours is mTLS: enrolled and not ``--insecure``;
    says at start which it is."""
    enrolled = files.exists()
    if s.insecure:
        log.warning(
            "--insecure: gRPC to the controller and to neighbours is plaintext%s",
            " although this device is enrolled" if enrolled else "",
        )
        return False
    if not enrolled:
        log.warning(
            "not enrolled (no %s): gRPC to the controller and to neighbours is plaintext; "
            "`edge-agent enroll` gives this device a certificate and mTLS",
            files.cert,
        )
        return False
    log.info("enrolled: gRPC to the controller and to neighbours is mTLS (%s)", files.directory)
    return True


def _any_port(listen: str) -> str:
    """``listen``'s host with port 0 (the peer listener's default)."""
    return f"{listen.rpartition(':')[0]}:0"


def agent_version() -> str:
    """This package's installed version ("0.0.0": not installed), as ``importlib.metadata``
    finds it (the first ``edgefleet-*.dist-info`` on ``sys.path``), read here directly:
    importing ``importlib.metadata`` costs an idle agent about 2 MB for this one value."""
    for entry in sys.path:
        for meta in sorted(Path(entry or ".").glob("edgefleet-*.dist-info/METADATA")):
            version = _metadata_version(meta)
            if version:
                return version
    return "0.0.0"


def _metadata_version(meta: Path) -> str:
    """The ``Version:`` header of a dist-info METADATA file ("": none, or unreadable)."""
    try:
        with meta.open(encoding="utf-8") as f:
            for line in f:
                if line.startswith("Version:"):
                    return line.partition(":")[2].strip()
                if not line.strip():
                    return ""  # the headers end at the first blank line
    except OSError:
        pass
    return ""


@dataclass(frozen=True)
class Endpoints:
    predict: str
    metrics_port: int | None  # None: metrics are off
    socket: str | None = None  # ``unix:PATH`` of the local Predict socket; None: off
    fast_socket: str | None = None  # ``unix:PATH`` of the fast local path (fastpath); None: off


class Agent:
    def __init__(
        self,
        settings: AgentSettings,
        *,
        timer: Callable[[], float] = time.perf_counter,
        telemetry_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``timer`` times Predict calls and the pre-activation latency runs; ``telemetry_clock``
        measures telemetry windows and stamps power readings (tests inject both)."""
        self.settings = s = settings
        self.device_id = s.device.device_id
        self.trust = TrustStore.from_pem_files(s.trusted_keys)
        if len(self.trust) == 0:
            raise InvalidInputError("the trusted key files hold no public key")
        s.data_dir.mkdir(parents=True, exist_ok=True)
        self.stopping = threading.Event()
        self._reasserted = 0.0  # monotonic time presence was last said again (_own_presence)
        self.metrics = AgentMetrics()
        self.window = self.metrics.window
        self.live = LiveStats()
        self.predictor = Predictor()
        self.outbox = Outbox(s.data_dir / "outbox.db", max_messages=s.outbox_max)
        self.metrics.watch_outbox(
            dropped=lambda: self.outbox.dropped, pending=lambda: len(self.outbox)
        )
        self.reporter = Reporter(
            device_id=self.device_id,
            fleet=s.device.fleet,
            labels=s.device.labels,
            agent_version=agent_version(),
            outbox=self.outbox,
        )
        self.trust_keeper = TrustKeeper(self.trust, data_dir=s.data_dir, reporter=self.reporter)
        self.neighbours = NeighbourTable(
            device_id=self.device_id,
            fleet=s.device.fleet,
            trust=self.trust,
            roster_file=s.data_dir / "roster.signed",
            require_roster=s.serving.failover_require_roster,
        )
        self.identity = IdentityFiles.in_data_dir(s.data_dir)
        self.tls = _grpc_tls(s, self.identity)
        self.forwarder = (
            Forwarder(
                self.neighbours,
                own=self._own_state,
                deadline=s.serving.failover_deadline_s,
                tls=self._peer_tls,
            )
            if s.serving.failover
            else None
        )
        self._tls_files = mqtt_tls_files(
            tls=s.mqtt.url.startswith(("mqtts:", "ssl:")),
            ca=s.mqtt.ca_file,
            cert=s.mqtt.cert_file,
            key=s.mqtt.key_file,
            files=self.identity,
        )
        self.session = MqttSession(
            broker_url(s.mqtt),  # with the password from --mqtt-password-file, if given
            client_id=self.device_id,
            subscriptions=[
                (topics.desired(self.device_id), 1),
                (self.neighbours.topic_filter, 1),
                (topics.trust(), 1),  # the signed trust bundle (rotation, revocation)
                (self.neighbours.roster_topic, 1),  # who failover may forward to
            ],
            on_message=self._on_message,
            will=Will(*self.reporter.presence_message(online=False)[:2]),
            on_connect=self.reporter.on_connect,
            keepalive=s.mqtt.keepalive_s,
            ca_file=self._tls_files[0],
            cert_file=self._tls_files[1],
            key_file=self._tls_files[2],
        )
        self.reporter.attach(self.session)
        self.renewer: Renewer | None = None  # started when the device has a certificate
        servicer = InferenceServicer(
            self.predictor,
            device_id=self.device_id,
            fleet=s.device.fleet,
            metrics=self.metrics,
            live=self.live,
            benchmarker=Benchmarker(self.trust),
            forwarder=self.forwarder,
            timer=timer,
            max_concurrent=s.serving.max_concurrent,
        )
        self.store = SlotStore(s.data_dir)
        self.peer_servicer: PeerServicer | None = None
        self.peer_artifacts: PeerArtifactServicer | None = None  # blobs for the fleet's devices
        self.peer_server: PeerServer | None = None  # enrolled agents: mTLS for neighbours
        self.peer_endpoint = ""
        if self.tls:
            self._peer_listener(servicer)
        self.server = InferenceServer(
            servicer,
            listen=s.serving.predict_listen,
            workers=s.serving.workers,
            max_concurrent=s.serving.max_concurrent,
            max_message_bytes=s.serving.max_message_bytes,
            socket_path=_socket_path(predict_socket_path(s)),
        )
        self.fast_server = _fast_server(s, servicer)
        # Docker, where it answers: container releases load through ``runtime``'s seam
        self.containers = Containers.probe(device_id=self.device_id) if s.containers else None
        if self.containers is not None:
            runtime.register_loader(s.data_dir, CONTAINER, self.containers.load)
        self.reporter.set_runtimes(
            ("onnxruntime", CONTAINER) if self.containers is not None else ("onnxruntime",)
        )
        self.reporter.set_hardware(variants.this_device())  # what chooses model variants
        self.state_file = StateFile(s.data_dir / "state.json")
        ledger, switch = self._switching()
        self.watch = HealthWatch(
            ledger=ledger, switch=switch, reporter=self.reporter, live=self.live
        )
        self.installer = self._installing(ledger, switch, timer=timer)
        self.container_watch = (
            ContainerWatch(
                self.containers,
                in_use=self._runtimes_in_use,
                reporter=self.reporter,
                metrics=self.metrics,
                interval=s.telemetry_interval,
            )
            if self.containers is not None
            else None
        )
        self._queue: queue.Queue[object] = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="agent-worker", daemon=True)
        self._power_root, self._telemetry_clock = s.power_root, telemetry_clock
        self._telemetry: TelemetryLoop | None = None
        self._serving = self._connecting = False

    # lifecycle

    def start(self) -> Endpoints:
        """Restore, serve, then connect; on any failure stop what was started and re-raise."""
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> Endpoints:
        failpoints.configure_from_env()
        self.trust_keeper.load()  # the newest bundle first: its revocations apply to the slots
        self.neighbours.load_roster()
        restored = restore(
            device_id=self.device_id,
            state_file=self.state_file,
            store=self.store,
            trust=self.trust,
            metrics=self.metrics,
            reporter=self.reporter,
        )
        if restored.runtime is not None:
            if restored.runtime.fallback:
                self.reporter.event(
                    "provider_fallback", restored.runtime.fallback, release=restored.runtime.release
                )
            self._serve(restored.runtime, restored.state)
        self._sweep_containers()  # orphans of a killed agent (its adopted one stays)
        endpoint = self.server.start()
        self._serving = True
        fast = self.fast_server.start() if self.fast_server is not None else None
        # the fleet is told the endpoint neighbours use: the mTLS one when enrolled
        self.peer_endpoint = self.peer_server.start() if self.peer_server is not None else ""
        self.reporter.set_endpoint(self.peer_endpoint or endpoint)
        self.installer.resume(restored.state, restored.pending)
        metrics_port = None
        if self.settings.serving.metrics_port >= 0:
            host = self.settings.serving.predict_listen.rpartition(":")[0].strip("[]")
            metrics_port = self.metrics.serve(host=host, port=self.settings.serving.metrics_port)
        endpoints = Endpoints(endpoint, metrics_port, self.server.socket_endpoint, fast)
        self._write_info(endpoints)
        self.session.start()
        self._start_renewer()
        self._connecting = True
        self.outbox.start(self.session)
        self._worker.start()
        self._telemetry = TelemetryLoop(
            self.window,
            interval=self.settings.telemetry_interval,
            device_id=self.device_id,
            release=lambda: rt.release if (rt := self.predictor.current) else "",
            publish=self.reporter.telemetry,
            power=PowerTap.open(
                self._power_root, registry=self.metrics.registry, clock=self._telemetry_clock
            ),
            clock=self._telemetry_clock,
        )
        self._telemetry.start()
        if self.container_watch is not None:
            self.container_watch.start()
        log.info(
            "agent %s ready: Predict on %s, metrics %s, broker %s",
            self.device_id,
            endpoint,
            f"on port {metrics_port}" if metrics_port is not None else "off",
            self.session.broker.redacted(),
        )
        return endpoints

    def stop(self) -> None:
        """Graceful stop: finish the current step, say offline, stop the servers (idempotent)."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        self._queue.put(_STOP)
        if self._worker.is_alive():
            self._worker.join(timeout=30)
        if self._telemetry is not None:
            self._telemetry.stop()
        if self.container_watch is not None:
            self.container_watch.stop()
        if self._connecting:
            self.outbox.drain_once(self.session)  # what the last steps reported, if we can
            self.reporter.close()
            self.session.stop(last=[self.reporter.presence_message(online=False)])
        self.outbox.stop()
        if self._serving:
            if self.fast_server is not None:
                self.fast_server.stop()
            self.server.stop(grace=2.0)
            if self.peer_server is not None:
                self.peer_server.stop(grace=2.0)
        if self.forwarder is not None:
            self.forwarder.close()
        if self.renewer is not None:
            self.renewer.stop()
        self.metrics.stop()
        if self.containers is not None:  # its container keeps serving; the next start adopts it
            runtime.register_loader(self.settings.data_dir, CONTAINER, None)
            self.containers.close()
        log.info("agent %s stopped", self.device_id)

    # wiring

    def _start_renewer(self) -> None:
        """Renew the device certificate before it expires (enrolled devices only)."""
        if not self.identity.exists() or not self.settings.fetch.controller:
            return
        cert = self.identity.identity()
        if cert.device_id != self.device_id:
            log.warning("the certificate names device %s, not %s", cert.device_id, self.device_id)
        using = self._tls_files[1] == str(self.identity.cert)

        def renewed() -> None:
            if using:
                self.session.reload_identity(str(self.identity.cert), str(self.identity.key))

        self.renewer = Renewer(
            self.settings.fetch.controller, files=self.identity, on_renewed=renewed, tls=self.tls
        )
        self.renewer.start()

    def _peer_listener(self, servicer: InferenceServicer) -> None:
        """The mTLS peer listener (enrolled agents): Predict for neighbours, and this agent's
        verified blobs for the fleet's devices, both admitted by fleet and roster."""
        s = self.settings
        self.peer_servicer = PeerServicer(
            servicer, fleet=s.device.fleet, listed=self.neighbours.listed
        )
        self.peer_artifacts = PeerArtifactServicer(
            ArtifactServicer(self.store.blobs),
            check=self.peer_servicer.check_peer,
            chunk=self._held_chunk,
        )
        self.peer_server = PeerServer(
            self.peer_servicer,
            listen=s.serving.peer_listen or _any_port(s.serving.predict_listen),
            files=self.identity,
            artifacts=self.peer_artifacts,
            max_concurrent=s.serving.max_concurrent,
            max_message_bytes=s.serving.max_message_bytes,
        )

    def _held_chunk(self, digest: str) -> bytes | None:
        """A model chunk one of this device's slots holds, its bytes checked against
        ``digest`` (None: not held, or not those bytes)."""
        held = deltas.held_chunks(self.store).get(digest)
        if held is None:
            return None
        return deltas.read_held(held, t.Chunk(digest=digest, size=held.size))

    def _controller_tls(self) -> rpc.ClientTls | None:
        """mTLS with the device identity (read now: renewals apply), or None (plaintext)."""
        return self.identity.client_tls() if self.tls else None

    def _peer_tls(self, device_id: str) -> rpc.ClientTls | None:
        """mTLS to neighbour ``device_id``, its certificate checked for that id."""
        return self.identity.client_tls(server_name=device_id) if self.tls else None

    def _switching(self) -> tuple[Ledger, Switch]:
        """The state's ledger and the one switch of the active model that writes through it."""
        ledger = Ledger(state_file=self.state_file, store=self.store, reporter=self.reporter)
        switch = Switch(
            ledger=ledger,
            store=self.store,
            trust=self.trust,
            reporter=self.reporter,
            metrics=self.metrics,
            serve=self._serve,
            unserve=self._unserve,
        )
        return ledger, switch

    def _installing(
        self, ledger: Ledger, switch: Switch, *, timer: Callable[[], float]
    ) -> Installer:
        """The install transaction and its parts, writing through ``ledger``, activating
        through ``switch``."""
        s = self.settings
        fallback = (s.fetch.controller,) if s.fetch.controller else ()
        return Installer(
            device_id=self.device_id,
            trust=self.trust,
            journal=InstallJournal(ledger=ledger, reporter=self.reporter),
            downloader=Downloader(
                store=self.store,
                reporter=self.reporter,
                metrics=self.metrics,
                stopping=self.stopping,
                deadline_s=s.fetch.deadline_s,
                stall_s=s.fetch.stall_s,
                tls=self._controller_tls,
                peer_tls=self._peer_tls,
            ),
            preparer=SlotPreparer(
                store=self.store,
                reporter=self.reporter,
                metrics=self.metrics,
                containers=self.containers,
                fallback_sources=fallback,
                timer=timer,
            ),
            switch=switch,
            watch=self.watch,
            store=self.store,
            predictor=self.predictor,
            metrics=self.metrics,
            fallback_sources=fallback,
        )

    def _serve(self, runtime: ModelRuntime, state: DeviceState) -> None:
        """Make ``runtime`` the one Predict uses (state naming it is already on disk)."""
        self.predictor.swap(runtime)
        self.server.set_serving(True)
        # the next status says it
        self.reporter.set_provider(
            runtime.provider,
            fallback=runtime.fallback,
            variant=runtime.model.manifest.variant,
            publish=False,
        )
        self.metrics.set_active(
            release=runtime.release,
            previous=state.previous.release if state.previous else "",
            manifest_digest=runtime.model.manifest_digest,
            provider=runtime.provider,
        )

    def _runtimes_in_use(self) -> tuple[ModelRuntime | None, ...]:
        """The runtimes whose containers must stay: serving (first), previous, checked."""
        return (self.predictor.current, self.watch.previous_runtime, self.installer.checked_runtime)

    def _sweep_containers(self) -> None:
        """Remove this device's containers no runtime in use names, then stale images."""
        if self.containers is None:
            return
        in_use = self._runtimes_in_use()
        keep = {r.container_id for r in in_use if isinstance(r, ContainerRuntime)}
        try:
            if self.containers.sweep(keep):
                state = self.installer.state
                digests = [s.manifest_digest for s in (state.active, state.previous) if s]
                self.containers.prune_images(digests)
        except Exception:  # Docker away for a moment: the next step sweeps again
            log.exception("cannot sweep containers")

    def _unserve(self) -> None:
        """Serve nothing (a release rolled back with no release before it)."""
        self.predictor.swap(None)
        self.server.set_serving(False)
        self.reporter.set_provider("", publish=False)
        self.metrics.set_active(release="", previous="", manifest_digest="", provider="")

    def _own_state(self) -> OwnState:
        """What failover needs of this device: the release it should serve."""
        status = self.reporter.status
        return OwnState(
            device_id=self.device_id,
            target_release=status.target_release,
            active_release=status.active_release or status.previous_release,
        )

    def _write_info(self, endpoints: Endpoints) -> None:
        """``<data-dir>/agent.json``, written atomically once serving: how tools find this agent.

        ``{"device_id", "fleet", "predict_endpoint", "predict_socket" (``unix:PATH``, "": off),
        "predict_fast_socket" (the fast local path's ``unix:PATH``, "": off),
        "peer_endpoint" (the mTLS listener for neighbours, "": not enrolled or --insecure),
        "metrics_port" (-1: off), "pid", "machine" (``platform.machine()``: x86_64, aarch64)}``
        """
        info = {
            "device_id": self.device_id,
            "fleet": self.settings.device.fleet,
            "predict_endpoint": endpoints.predict,
            "predict_socket": endpoints.socket or "",
            "predict_fast_socket": endpoints.fast_socket or "",
            "peer_endpoint": self.peer_endpoint,
            "metrics_port": -1 if endpoints.metrics_port is None else endpoints.metrics_port,
            "pid": os.getpid(),
            "machine": platform.machine(),
        }
        atomic_write(self.settings.data_dir / "agent.json", json.dumps(info).encode() + b"\n")

    def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        """paho's thread: hand the payload to the worker (presence: to the neighbour table)."""
        if topic == topics.trust():
            self.trust_keeper.offer(payload)
            return
        if topic == topics.presence(self.neighbours.fleet, self.device_id):
            self._own_presence(payload)
            return
        if topic != topics.desired(self.device_id):
            self.neighbours.observe(topic, payload)
            return
        if not payload:
            log.info("desired state cleared on the broker; keeping the current model")
            return
        self._queue.put(payload)

    def _own_presence(self, payload: bytes) -> None:
        """paho's thread: the broker says this device is offline while it is connected: its
        last will from a connection that died, delivered late (a clustered broker electing
        after a lost node can reorder it after the newer "online", or lose that one), or one
        queued while it was away. Say online again, with the status (at most once a second:
        the refresh that ``on_connect`` schedules says it once more later)."""
        try:
            presence = wire.decode_presence(payload)
        except MalformedMessageError:
            return
        if presence.online or presence.device_id != self.device_id or self.stopping.is_set():
            return
        now = time.monotonic()
        if not self.session.connected or now - self._reasserted < 1.0:
            return
        self._reasserted = now
        log.info("the broker holds %s offline while it is connected; saying online", self.device_id)
        self.reporter.on_connect()

    def _work(self) -> None:
        wait: float | None = 0.0
        while not self.stopping.is_set():
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                item = None
            if item is _STOP:
                break
            try:
                if isinstance(item, bytes):
                    self.installer.offer(item)
                    wait = 0.0  # look at everything queued before the next step
                    continue
                wait = self.installer.step()
            except Exception:
                log.exception("agent worker failed; going on")
                wait = 5.0
            finally:
                self._sweep_containers()
                self.reporter.flush()
