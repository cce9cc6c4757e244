"""Controller settings: nested frozen dataclasses, loaded once (CLI flags, each also an
``EDGEFLEET_CONTROLLER_*`` variable) and passed down.

Each part of the controller takes the one section it needs, never the whole tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgefleet.common.errors import InvalidInputError


@dataclass(frozen=True)
class GrpcSettings:
    bind: str = "127.0.0.1:50051"
    """Address the devices' gRPC server listens on (HOST:PORT; port 0 picks a free one)."""
    advertise: str = ""
    """ArtifactService address put into desired states; empty = the bound address."""
    extra_sources: tuple[str, ...] = ()
    """Blob sources devices try before this controller: oci://REGISTRY/REPO or HOST:PORT."""
    peer_sources: int = 3
    """Devices of the fleet holding a release named before these sources (0: none)."""
    workers: int = 16
    """Threads serving gRPC calls."""
    grace_s: float = 3.0
    """How long calls in flight may run on after a stop is asked."""
    tls: bool = False
    """mTLS on ``bind`` (a device certificate of the fleet CA, checked against the registry,
    for ArtifactService) and enrollment over TLS on ``enroll_bind``; False: both on ``bind`` in
    plaintext (a warning at start)."""
    enroll_bind: str = "127.0.0.1:50053"
    """Where devices without a certificate enroll with a token when ``tls`` (TLS, server
    certificate only)."""


@dataclass(frozen=True)
class ApiSettings:
    bind: str = "127.0.0.1:50052"
    """Address the operator API (ControllerService, health) listens on, apart from devices."""
    max_message_bytes: int = 64 << 20
    """Largest single message the operator API takes or sends (larger eval data: UploadData)."""


@dataclass(frozen=True)
class MqttSettings:
    url: str = "mqtt://127.0.0.1:1883"
    """Broker URL (mqtt:// or mqtts://, credentials in the URL); the nodes of a clustered
    broker comma-separated (reconnects go to the next in turn)."""
    client_id: str = "edgefleet-controller"
    """MQTT client id; the persistent session is keyed by it."""
    ca_file: str | None = None
    """CA bundle for mqtts:// brokers; None = the system store."""
    cert_file: str | None = None
    """Client certificate (PEM) for a broker that requires one (``broker-config`` makes it)."""
    key_file: str | None = None
    """Its private key (PEM, mode 0600)."""
    allow_plaintext: bool = False
    """With ``GrpcSettings.tls``, accept a plaintext ``mqtt://`` broker (``--insecure-mqtt``,
    a warning at every start); False: the controller refuses to start on one. Without TLS
    (``--insecure``) a plaintext broker is accepted regardless."""


@dataclass(frozen=True)
class PkiSettings:
    ca_cert: Path | None = None
    """Bring your own CA: its certificate (PEM); None = <data_dir>/ca, made on first use."""
    ca_key: Path | None = None
    """Its private key (PEM, EC); given together with ``ca_cert``."""
    cert_lifetime_s: float = 30 * 24 * 3600.0
    """Lifetime of a device certificate; agents renew at 2/3 of it."""
    token_ttl_s: float = 15 * 60.0
    """Default lifetime of an enrollment token."""
    broker_dir: Path | None = None
    """A ``broker-config`` output dir whose CRL and ACL are rewritten as devices change."""


@dataclass(frozen=True)
class RegistrySettings:
    max_model_bytes: int = 512 << 20
    """Largest .onnx file UploadModel accepts."""
    max_eval_bytes: int = 2 << 30
    """Largest eval data UploadData accepts (kept in memory, four uploads at most, one hour)."""


@dataclass(frozen=True)
class SandboxSettings:
    memory_bytes: int = 4 << 30
    """Address space a sandbox process (model inspection, golden outputs, compression) may use;
    0 = no limit."""
    cpu_s: int = 600
    """CPU seconds one model inspection or golden run may use; 0 = no limit."""
    timeout_s: float = 600.0
    """Wall-clock seconds before an inspection or golden run is killed; 0 = no limit."""
    search_s: float = 7200.0
    """CPU and wall-clock seconds for one whole compression search; 0 = no limit."""
    processes: int = 4
    """Sandbox processes at a time; a call past that waits for a turn."""


@dataclass(frozen=True)
class IngestSettings:
    events_per_device: int = 1000
    """Events kept per device; older ones are deleted as new ones arrive."""
    queue_size: int = 10_000
    """Messages waiting for the database; telemetry beyond it is dropped, the rest waits."""
    batch_size: int = 256
    """Messages written in one transaction."""
    enrolled_only: bool = False
    """Drop the reports of devices the registry does not know (they never register)."""


@dataclass(frozen=True)
class MetricsSettings:
    port: int | None = None
    """Port for the Prometheus /metrics endpoint; None = not served."""
    host: str = "127.0.0.1"
    """Address the /metrics endpoint listens on."""


@dataclass(frozen=True)
class RolloutSettings:
    tick_s: float = 1.0
    """How often the rollout driver looks at every unfinished rollout."""
    resend_after_s: float = 15.0
    """A device behind its desired generation this long is sent its desired state again."""
    lag_check_s: float = 5.0
    """How often the driver looks for devices behind their desired generation."""
    lease_ttl_s: float = 8.0
    """With several replicas: how long the driving one's lease lasts unrenewed (takeover time)."""
    desired_ttl_s: float = 30 * 86400.0
    """A desired state expires this long after it is sealed (re-published ones are re-sealed);
    also the overlap window a rotated-out signing key stays trusted for fresh messages."""
    trust_interval_s: float = 1.0
    """How often the trust bundle and the fleet rosters are looked at (sent when changed)."""


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("edgefleet-data")
    """Keys, blobs, the SQLite database and controller.json live here."""
    db_url: str = ""
    """SQLAlchemy URL; empty = sqlite:///<data_dir>/controller.db."""
    grpc: GrpcSettings = field(default_factory=GrpcSettings)
    """The gRPC server devices reach (ArtifactService, health)."""
    api: ApiSettings = field(default_factory=ApiSettings)
    """The operator API's gRPC server (ControllerService, health), bearer tokens required."""
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    """The broker connection."""
    registry: RegistrySettings = field(default_factory=RegistrySettings)
    """Model uploads."""
    sandbox: SandboxSettings = field(default_factory=SandboxSettings)
    """The processes that parse and run users' models."""
    ingest: IngestSettings = field(default_factory=IngestSettings)
    """Device reports coming in over MQTT."""
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    """Prometheus metrics."""
    rollouts: RolloutSettings = field(default_factory=RolloutSettings)
    """The rollout driver."""
    pki: PkiSettings = field(default_factory=PkiSettings)
    """The fleet CA: device certificates, enrollment tokens, the CRL."""

    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{self.data_dir.resolve() / 'controller.db'}"

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def blobs_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def state_file(self) -> Path:
        return self.data_dir / "controller.json"

    @property
    def admin_token_file(self) -> Path:
        return self.data_dir / "admin.token"

    @property
    def ca_dir(self) -> Path:
        return self.data_dir / "ca"


def with_db_password_file(url: str, password_file: Path) -> str:
    """The SQLAlchemy ``url`` with its user's password read from ``password_file``: how a
    database password reaches the controller without being on its command line."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise InvalidInputError(f"not a database URL: {exc}") from None
    if not parsed.username:
        raise InvalidInputError(
            "a database password file needs a user in --db: postgresql://USER@HOST/DB"
        )
    if parsed.password:
        raise InvalidInputError("give the database password in --db or in a file, not both")
    try:
        password = password_file.read_text().rstrip("\r\n")
    except OSError as exc:
        raise InvalidInputError(f"cannot read the database password file: {exc}") from None
    return parsed.set(password=password).render_as_string(hide_password=False)


def split_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise InvalidInputError(f"address must be HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


def join_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
