"""Wiring: build the controller's parts from ``Settings``, start them in order, stop them in
reverse. The one place that knows every part; none of the parts knows this one.

``Controller(settings).start()`` returns the bound gRPC port devices reach (ArtifactService),
so tests run it in-process on port 0; the operator API (ControllerService, behind ``auth``)
listens on its own port, ``api_address``. The CLI does the same and then waits for a signal.
With ``grpc.tls`` the devices' port is mTLS and enrollment has its own TLS listener,
``enroll_address`` (``devicetls``), and the operator API is TLS with the same server
certificate (bearer tokens, no client certificate; the CA bundle edgectl checks it against is
written as ``api-ca.pem`` next to ``controller.json``); without, all are plaintext, warned.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from edgefleet.common import rpc
from edgefleet.common.artifacts import ArtifactServicer, BlobStore, atomic_write
from edgefleet.common.errors import InvalidInputError, TransientError
from edgefleet.common.mqttclient import MqttSession, parse_urls
from edgefleet.controller import auth, benchmarking, devicetls
from edgefleet.controller.audit import AuditLog
from edgefleet.controller.compressing import Compressor
from edgefleet.controller.config import Settings, join_address, split_address
from edgefleet.controller.db import Database
from edgefleet.controller.devices import ingest as ingesting
from edgefleet.controller.devices.metrics import DEVICE_SERIES, FleetCollector
from edgefleet.controller.devices.registry import DeviceRegistry
from edgefleet.controller.enrollment import Enrollment, IdentityState, open_enrollment
from edgefleet.controller.identityservice import EnrollmentServicer
from edgefleet.controller.keys import KeyRing
from edgefleet.controller.leasing import DbMutex, Lease
from edgefleet.controller.metrics import Metrics
from edgefleet.controller.operators import OperatorStore
from edgefleet.controller.peering import PeerSources
from edgefleet.controller.pki import KeyPair
from edgefleet.controller.registry import Registry
from edgefleet.controller.releases import Releases
from edgefleet.controller.rollouts.deployer import Deployer
from edgefleet.controller.rollouts.driver import RolloutDriver
from edgefleet.controller.rollouts.sender import Sender
from edgefleet.controller.rollouts.shell import Rollouts
from edgefleet.controller.rollouts.store import RolloutStore
from edgefleet.controller.sandbox import Sandbox
from edgefleet.controller.service import ControllerServicer
from edgefleet.controller.trustpub import TrustPublisher
from edgefleet.controller.uploads import DataUploads
from edgefleet.v1 import artifact_pb2_grpc, controller_pb2_grpc, enroll_pb2_grpc

log = logging.getLogger(__name__)

API_CA_FILE = "api-ca.pem"
"""In the data dir with ``--tls``: the CA bundle the operator API's certificate chains to."""

SERVICE = "edgefleet.v1.ControllerService"
ARTIFACTS = "edgefleet.v1.ArtifactService"
_WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}  # noqa: S104


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Controller:
    """``clock`` (wall-clock seconds) times rollouts: bake, device timeouts, their records."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.address = ""  # the bound HOST:PORT devices reach, once started
        self.api_address = ""  # the bound HOST:PORT of the operator API
        self.metrics = Metrics()
        self._stopped = threading.Event()
        self._server: grpc.Server | None = None
        self._api: grpc.Server | None = None
        self._enroll: grpc.Server | None = None
        self._client_pair: KeyPair | None = None  # for agents' peer listeners (Benchmark)
        self.enroll_address = ""  # the bound HOST:PORT of the enrollment listener (--tls)
        self._pools: list[futures.ThreadPoolExecutor] = []  # grpc leaves their workers running
        self._health = health.HealthServicer()
        self._api_health = health.HealthServicer()
        self._db: Database | None = None
        self._mqtt: MqttSession | None = None
        self._ingest: ingesting.Ingest | None = None
        self._releases: Releases | None = None
        self._driver: RolloutDriver | None = None
        self._trustpub: TrustPublisher | None = None
        self.enrollment: Enrollment | None = None  # device identities, once started
        self._reconnected = threading.Event()

    @property
    def ingest(self) -> ingesting.Ingest:
        assert self._ingest is not None, "controller not started"
        return self._ingest

    @property
    def releases(self) -> Releases:
        assert self._releases is not None, "controller not started"
        return self._releases

    @property
    def mqtt(self) -> MqttSession:
        assert self._mqtt is not None, "controller not started"
        return self._mqtt

    def start(self) -> int:
        """Start every part; return the bound gRPC port. A failed start undoes what it did."""
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> int:
        s = self.settings
        self._check_broker_tls()  # before anything is made: a refusal changes nothing
        s.data_dir.mkdir(parents=True, exist_ok=True)
        self._db = db = Database(s.database_url)
        db.create_schema()
        operators = OperatorStore(db, clock=now_ms)
        operators.bootstrap(s.admin_token_file)
        audit_log = AuditLog(db, clock=now_ms)
        blobs = BlobStore(s.blobs_dir)
        ttl_ms = int(s.rollouts.desired_ttl_s * 1000)
        keys = KeyRing(db, s.keys_dir, clock=now_ms, overlap_ms=ttl_ms)
        registry = Registry(db, blobs, clock=now_ms, sandbox=Sandbox(s.sandbox))
        self._releases = releases = Releases(
            db,
            registry,
            keys=keys,
            clock=now_ms,
            blobs=blobs,
            profiler=lambda device_id: benchmarking.device_profiler(
                devices, keys, device_id, tls=self._device_client_tls
            ),
        )
        devices = DeviceRegistry(
            db,
            clock=now_ms,
            events_per_device=s.ingest.events_per_device,
            enrolled_only=s.ingest.enrolled_only,
            refused=lambda reason: self.metrics.refused.labels(reason).inc(),
        )
        self.metrics.watch_devices(devices.fleets)

        self._ingest = ingesting.Ingest(devices, self.metrics, settings=s.ingest)
        self._ingest.start()
        self._mqtt = MqttSession(
            s.mqtt.url,
            client_id=s.mqtt.client_id,
            subscriptions=ingesting.SUBSCRIPTIONS,
            on_message=self._ingest.handle,
            on_connect=self._on_connect,  # re-publish desired states, trust bundle, rosters
            ca_file=s.mqtt.ca_file,
            cert_file=s.mqtt.cert_file,
            key_file=s.mqtt.key_file,
        )
        self._trustpub = TrustPublisher(
            keys, db, self._mqtt, interval_s=s.rollouts.trust_interval_s, clock_ms=now_ms
        )
        self._mqtt.start()

        enrollment = self._open_identities(db)
        server, host, port, tls = self._listen_devices(enrollment)
        api_server, api_host, api_port = self._listen_api(
            auth.OperatorAuth(operators, audit_log, auth.Resolver(db)), tls
        )
        sender = Sender(
            releases,
            keys=keys,
            publisher=self._mqtt,
            metrics=self.metrics,
            artifact_sources=[*s.grpc.extra_sources, self._advertised(host, port)],
            desired_ttl_ms=ttl_ms,
            clock_ms=now_ms,
            peers=PeerSources(db, limit=s.grpc.peer_sources),
        )
        store = RolloutStore(db)
        # Several replicas may share this database: changes serialise on a lock they share,
        # and only the holder of the rollouts lease drives (leasing).
        rollouts = Rollouts(
            store,
            sender,
            clock=self.clock,
            resend_after_s=s.rollouts.resend_after_s,
            lock=DbMutex(db, lock_file=s.data_dir / "rollouts.lock"),
        )
        self.lease = Lease(
            db,
            holder=f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}",
            ttl_s=s.rollouts.lease_ttl_s,
            clock_ms=now_ms,
        )
        self.metrics.watch(
            FleetCollector(
                devices=lambda: devices.list_devices(limit=DEVICE_SERIES),
                phases=store.phases,
                aborted=store.aborted,
                clock_ms=now_ms,
            )
        )
        deployer = Deployer(rollouts, releases, keys=keys, sender=sender, metrics=self.metrics)
        servicer = ControllerServicer(
            keys=keys,
            registry=registry,
            releases=releases,
            devices=devices,
            deployer=deployer,
            rollouts=rollouts,
            max_model_bytes=s.registry.max_model_bytes,
            uploads=DataUploads(max_bytes=s.registry.max_eval_bytes),
            compressor=Compressor(
                registry,
                device_timer=lambda device_id: benchmarking.device_timer(
                    devices, keys, device_id, tls=self._device_client_tls
                ),
            ),
            operators=operators,
            audit=audit_log,
            enrollment=enrollment,
        )
        controller_pb2_grpc.add_ControllerServiceServicer_to_server(servicer, api_server)
        health_pb2_grpc.add_HealthServicer_to_server(self._api_health, api_server)
        # Release blobs, read-only, for `edgectl release export/push` (what devices fetch too).
        artifact_pb2_grpc.add_ArtifactServiceServicer_to_server(ArtifactServicer(blobs), api_server)
        self._add_device_services(server, blobs)
        server.start()
        if self._enroll is not None:
            self._enroll.start()
        api_server.start()
        for name in ("", ARTIFACTS):
            self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        for name in ("", SERVICE):
            self._api_health.set(name, health_pb2.HealthCheckResponse.SERVING)

        self._driver = RolloutDriver(
            rollouts,
            tick_s=s.rollouts.tick_s,
            reconnected=self._reconnected,
            lag_check_s=s.rollouts.lag_check_s,
            lease=self.lease,
        )
        self._driver.start()
        self._trustpub.start()
        if s.metrics.port is not None:
            self.metrics.serve(host=s.metrics.host, port=s.metrics.port)
        self._write_state(host, port, api_host, api_port)
        log.info(
            "controller ready: devices on %s, operator API on %s (data %s; devices: %s)",
            self.address,
            self.api_address,
            s.data_dir,
            f"mTLS, enrollment over TLS on {self.enroll_address}" if tls else "plaintext",
        )
        return port

    def _on_connect(self) -> None:
        self._reconnected.set()  # the driver re-publishes every desired state
        if self._trustpub is not None:
            self._trustpub.reconnected()

    def _check_broker_tls(self) -> None:
        """With ``grpc.tls`` (``--tls``, the default) and a plaintext ``mqtt://`` broker: a
        refusal, unless ``mqtt.allow_plaintext`` (``--insecure-mqtt``) asks for it, then a loud
        warning at every start. Desired states stay signed either way, but plaintext MQTT
        (telemetry, presence, inference) is readable and forgeable on the wire and its clients
        are not authenticated by certificate."""
        s = self.settings
        brokers = parse_urls(s.mqtt.url)
        if not s.grpc.tls or all(b.tls for b in brokers):
            return
        shown = ",".join(b.redacted() for b in brokers)
        if not s.mqtt.allow_plaintext:
            raise InvalidInputError(
                f"plaintext broker {shown} with --tls: refused; use mqtts:// with --mqtt-cert, "
                "--mqtt-key and --mqtt-ca (edge-controller broker-config makes them), or pass "
                "--insecure-mqtt (plaintext MQTT, mTLS gRPC) or --insecure (all plaintext)"
            )
        log.warning(
            "plaintext broker %s (--insecure-mqtt): MQTT (telemetry, presence, inference) is "
            "neither encrypted nor mutually authenticated; use mqtts:// with --mqtt-cert "
            "(edge-controller broker-config)",
            shown,
        )

    def _listen_api(
        self, gate: auth.OperatorAuth, tls: tuple[bytes, bytes] | None
    ) -> tuple[grpc.Server, str, int]:
        """The operator API's own server, every call through ``gate``; bound, not started.
        With ``tls`` (``--tls``) it is TLS with the controller's server certificate (no client
        certificate: operators present bearer tokens), else plaintext, warned."""
        s = self.settings
        self._api = api_server = grpc.server(
            self._pool(s.grpc.workers, "api"),
            interceptors=[gate],
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", s.api.max_message_bytes),
                ("grpc.max_send_message_length", s.api.max_message_bytes),
            ],
        )
        api_host, _ = split_address(s.api.bind)
        try:
            if tls is None:
                log.warning(
                    "operator API on %s is PLAINTEXT (--insecure): bearer tokens travel "
                    "unencrypted; run without --insecure (TLS)",
                    s.api.bind,
                )
                api_port = api_server.add_insecure_port(s.api.bind)
            else:
                creds = rpc.server_credentials(*tls, client_ca_pem=None)
                api_port = api_server.add_secure_port(s.api.bind, creds)
        except RuntimeError as exc:
            raise TransientError(f"cannot listen on {s.api.bind}: {exc}") from exc
        self.api_address = join_address(api_host, api_port)
        return api_server, api_host, api_port

    def _listen_devices(
        self, enrollment: Enrollment
    ) -> tuple[grpc.Server, str, int, tuple[bytes, bytes] | None]:
        """The devices' server (mTLS or plaintext) and, with TLS, the enrollment listener;
        bound, not started."""
        s = self.settings
        self.device_gate = devicetls.DeviceGate(enrollment.check_certificate)
        self._server = server = grpc.server(
            self._pool(s.grpc.workers, "grpc"),
            interceptors=[self.device_gate] if s.grpc.tls else [],
            options=[
                ("grpc.so_reuseport", 0),  # a second controller on the same port must fail
                ("grpc.max_receive_message_length", 64 << 20),
                ("grpc.max_send_message_length", 64 << 20),
            ],
        )
        host, _ = split_address(s.grpc.bind)
        tls = self._device_tls(enrollment)
        try:
            if tls is None:
                port = server.add_insecure_port(s.grpc.bind)
            else:
                mtls = rpc.server_credentials(*tls, client_ca_pem=enrollment.ca.bundle_pem)
                port = server.add_secure_port(s.grpc.bind, mtls)
        except RuntimeError as exc:
            raise TransientError(f"cannot listen on {s.grpc.bind}: {exc}") from exc
        self.address = join_address(host, port)
        if tls is not None:
            self._listen_enroll(enrollment, tls)
        return server, host, port, tls

    def _device_tls(self, enrollment: Enrollment) -> tuple[bytes, bytes] | None:
        """(key, certificate chain) of the devices' listeners, or None (plaintext, warned)."""
        s = self.settings
        if not s.grpc.tls:
            log.warning(
                "devices' gRPC on %s is PLAINTEXT (--insecure): anyone who reaches it can "
                "fetch release blobs and enrollment tokens travel unencrypted; run without "
                "--insecure (mTLS, enrollment on --enroll-listen)",
                s.grpc.bind,
            )
            return None
        hosts = devicetls.server_hosts(
            s.grpc.advertise, s.grpc.bind, s.grpc.enroll_bind, s.api.bind
        )
        pair = devicetls.server_certificate(enrollment.ca, hosts, now=enrollment.now())
        log.info("devices' gRPC is TLS; server certificate for %s", ", ".join(hosts))
        return pair.key_pem, pair.cert_pem

    def _device_client_tls(self, device_id: str) -> rpc.ClientTls | None:
        """mTLS to an enrolled, unrevoked device's peer listener (``--tls``), else None."""
        enrollment = self.enrollment
        if not self.settings.grpc.tls or enrollment is None:
            return None
        if not any(
            i.device_id == device_id
            and i.state in (IdentityState.ENROLLED, IdentityState.QUARANTINED)
            for i in enrollment.list_identities()
        ):
            return None
        if self._client_pair is None:
            self._client_pair = devicetls.controller_client(enrollment.ca, now=enrollment.now())
        return rpc.ClientTls(
            ca_pem=enrollment.ca.bundle_pem,
            key_pem=self._client_pair.key_pem,
            cert_pem=self._client_pair.cert_pem,
            server_name=device_id,
        )

    def _listen_enroll(self, enrollment: Enrollment, tls: tuple[bytes, bytes]) -> None:
        """The enrollment listener (TLS, no client certificate asked): bound, not started."""
        s = self.settings
        self._enroll = enroll = grpc.server(
            self._pool(4, "enroll"),
            options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 1 << 20)],
        )
        enroll_pb2_grpc.add_EnrollmentServiceServicer_to_server(
            EnrollmentServicer(enrollment), enroll
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, enroll)
        enroll_host, _ = split_address(s.grpc.enroll_bind)
        try:
            bound = enroll.add_secure_port(
                s.grpc.enroll_bind, rpc.server_credentials(*tls, client_ca_pem=None)
            )
        except RuntimeError as exc:
            raise TransientError(f"cannot listen on {s.grpc.enroll_bind}: {exc}") from exc
        self.enroll_address = join_address(enroll_host, bound)

    def _open_identities(self, db: Database) -> Enrollment:
        """The fleet CA and the device registry (``enrollment``); writes the CRL."""
        s = self.settings
        self.enrollment = open_enrollment(db, s.pki, ca_dir=s.ca_dir, clock=self.clock)
        return self.enrollment

    def _add_device_services(self, server: grpc.Server, blobs: BlobStore) -> None:
        """What devices reach: blobs, enrollment and renewal, health."""
        assert self.enrollment is not None
        artifacts = ArtifactServicer(
            blobs,
            on_corrupt=lambda _digest, _found: self.metrics.corrupt_blobs.inc(),
            on_served=self.metrics.artifact_bytes.inc,
        )
        artifact_pb2_grpc.add_ArtifactServiceServicer_to_server(artifacts, server)
        enroll_pb2_grpc.add_EnrollmentServiceServicer_to_server(
            EnrollmentServicer(self.enrollment), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)

    def _advertised(self, host: str, port: int) -> str:
        if self.settings.grpc.advertise:
            return self.settings.grpc.advertise
        if host in _WILDCARDS:
            name = socket.gethostname()
            log.warning(
                "gRPC bound to every interface; advertising %s:%d to devices (set --advertise)",
                name,
                port,
            )
            return join_address(name, port)
        return join_address(host, port)

    def _write_state(self, host: str, port: int, api_host: str, api_port: int) -> None:
        local = join_address(_WILDCARDS.get(host, host), port)
        api = join_address(_WILDCARDS.get(api_host, api_host), api_port)
        state: dict[str, object] = {"grpc": local, "api": api, "pid": os.getpid()}
        if self.enroll_address:  # --tls: the devices' port is mTLS, enrollment is here
            e_host, e_port = split_address(self.enroll_address)
            state["enroll"] = join_address(_WILDCARDS.get(e_host, e_host), e_port)
            state["tls"] = True
            state["api_ca"] = str(self._write_api_ca())
        atomic_write(self.settings.state_file, json.dumps(state).encode() + b"\n")

    def _write_api_ca(self) -> Path:
        """The CA bundle edgectl checks the operator API's certificate against (``--ca-file``,
        ``EDGECTL_CA_FILE``, ``ca_file``), next to ``controller.json``; public, mode 0644."""
        assert self.enrollment is not None
        path = self.settings.state_file.parent / API_CA_FILE
        atomic_write(path, self.enrollment.ca.bundle_pem)
        path.chmod(0o644)
        return path

    def wait(self, timeout: float | None = None) -> bool:
        """Block until ``stop`` has run (or ``timeout`` passes)."""
        return self._stopped.wait(timeout)

    def stop(self) -> None:
        """Stop taking calls, let calls in flight finish, stop the rollout driver, then close
        MQTT, the writer, the DB."""
        if self._stopped.is_set():
            return
        self._health.enter_graceful_shutdown()
        self._api_health.enter_graceful_shutdown()
        if self._api is not None:
            self._api.stop(self.settings.grpc.grace_s).wait()
        if self._server is not None:
            self._server.stop(self.settings.grpc.grace_s).wait()
        if self._enroll is not None:
            self._enroll.stop(self.settings.grpc.grace_s).wait()
        for pool in self._pools:
            pool.shutdown(wait=False)
        if self._driver is not None:
            self._driver.stop()
        if self._trustpub is not None:
            self._trustpub.stop()
        if self._mqtt is not None:
            self._mqtt.stop()
        if self._ingest is not None:
            self._ingest.stop()
        self.metrics.close()
        if self._db is not None:
            self._db.dispose()
        self._remove_state()
        self._stopped.set()
        log.info("controller stopped")

    def _pool(self, workers: int, prefix: str) -> futures.ThreadPoolExecutor:
        pool = futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=prefix)
        self._pools.append(pool)
        return pool

    def _remove_state(self) -> None:
        path = self.settings.state_file
        try:
            if json.loads(path.read_text()).get("pid") == os.getpid():
                path.unlink()
        except (OSError, ValueError):
            pass
