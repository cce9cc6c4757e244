"""The controller's state in SQL: typed ORM models and the engine/session factory.

SQLite (WAL, busy timeout) on one machine, PostgreSQL at scale: the same models, another URL.
Writers on SQLite open their transaction with ``BEGIN IMMEDIATE``, so two writers queue on the
busy timeout instead of one failing when it upgrades a read lock. Private keys are never here.
The schema is made and upgraded on start by Alembic migrations (``migrating``,
``migrations/versions``); a database from before migrations is adopted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
    true,
)
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.schema import CreateColumn

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 10_000
_NAME = String(63)
_REF = String(200)
_DIGEST = String(71)
# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit one.
_ROW_ID = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    pass


class KeyRow(Base):
    __tablename__ = "signing_keys"
    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    public_key_pem: Mapped[str] = mapped_column(Text)
    created_at_ms: Mapped[int] = mapped_column(BigInteger)
    active: Mapped[bool] = mapped_column(Boolean, index=True)
    retired_at_ms: Mapped[int] = mapped_column(BigInteger, server_default="0")
    """When a rotation made another key active (0: never); its overlap window starts here."""
    revoked_at_ms: Mapped[int] = mapped_column(BigInteger, server_default="0")
    """When ``edgectl keys revoke`` took it out of the trust bundle (0: trusted)."""


class ModelRow(Base):
    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("name", "version"),)
    id: Mapped[int] = mapped_column(_ROW_ID, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(_NAME)
    version: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(_DIGEST)
    size: Mapped[int] = mapped_column(BigInteger)
    inputs: Mapped[list[Any]] = mapped_column(JSON)
    outputs: Mapped[list[Any]] = mapped_column(JSON)
    opset: Mapped[int] = mapped_column(Integer)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at_ms: Mapped[int] = mapped_column(BigInteger)
    # A compressed version: its source version (same name) and, as blob digests, the search's
    # report, the golden .npz and the packed transfer container (NULL: none, or not packed).
    parent_version: Mapped[int | None] = mapped_column(Integer)
    report_json_digest: Mapped[str | None] = mapped_column(_DIGEST)
    report_markdown_digest: Mapped[str | None] = mapped_column(_DIGEST)
    golden_digest: Mapped[str | None] = mapped_column(_DIGEST)
    transfer_digest: Mapped[str | None] = mapped_column(_DIGEST)
    transfer_size: Mapped[int | None] = mapped_column(BigInteger)


class ReleaseRow(Base):
    __tablename__ = "releases"
    __table_args__ = (UniqueConstraint("name", "version"),)
    id: Mapped[int] = mapped_column(_ROW_ID, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(_NAME)
    version: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[int] = mapped_column(Integer)
    manifest_digest: Mapped[str] = mapped_column(_DIGEST)
    key_id: Mapped[str] = mapped_column(String(64))
    signed_manifest: Mapped[bytes] = mapped_column(LargeBinary)
    notes: Mapped[str] = mapped_column(Text, default="")
    created_at_ms: Mapped[int] = mapped_column(BigInteger)


class DeviceRow(Base):
    """A device, registered by its first status; later statuses overwrite the reported fields."""

    __tablename__ = "devices"
    device_id: Mapped[str] = mapped_column(_NAME, primary_key=True)
    fleet: Mapped[str] = mapped_column(_NAME, index=True)
    labels: Mapped[dict[str, str]] = mapped_column(JSON)
    phase: Mapped[str | None] = mapped_column(String(16))
    active_release: Mapped[str] = mapped_column(_REF, default="")
    previous_release: Mapped[str] = mapped_column(_REF, default="")
    target_release: Mapped[str] = mapped_column(_REF, default="")
    generation_applied: Mapped[int] = mapped_column(BigInteger, default=0)
    last_error: Mapped[str] = mapped_column(Text, default="")
    predict_endpoint: Mapped[str] = mapped_column(String(255), default="")
    agent_version: Mapped[str] = mapped_column(String(64), default="")
    active_manifest_digest: Mapped[str] = mapped_column(String(80), default="")
    status_at_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    status_seq: Mapped[int] = mapped_column(BigInteger, server_default="0")
    """The ``seq`` of the status these columns hold: an older one changes nothing."""
    container: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    """The active release's container as the status named it (``t.ContainerStatus`` fields);
    None when the device serves in-process or nothing."""
    hardware: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    """The device's hardware as its status named it (``t.Hardware`` fields, GPUs as lists);
    None until an agent that reports it."""
    active_provider: Mapped[str] = mapped_column(String(64), server_default="")
    """The execution provider the active release runs on ("": none in-process)."""
    provider_fallback: Mapped[str] = mapped_column(Text, server_default="")
    """Why not the release's first provider preference ("": it is)."""
    active_variant: Mapped[str] = mapped_column(String(64), server_default="")
    """The active release's model variant the device runs ("": the release's default)."""
    runtimes: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    """The release runtimes the device's agent offers ("onnxruntime", "container": Docker
    answered it at start); None until an agent that reports them."""
    first_seen_ms: Mapped[int] = mapped_column(BigInteger)
    last_seen_ms: Mapped[int] = mapped_column(BigInteger)


class PresenceRow(Base):
    __tablename__ = "presence"
    device_id: Mapped[str] = mapped_column(_NAME, primary_key=True)
    fleet: Mapped[str] = mapped_column(_NAME)
    online: Mapped[bool] = mapped_column(Boolean)
    predict_endpoint: Mapped[str] = mapped_column(String(255), default="")
    active_release: Mapped[str] = mapped_column(_REF, default="")
    at_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    received_ms: Mapped[int] = mapped_column(BigInteger)


class TelemetryRow(Base):
    """The latest telemetry window per device (history belongs in Prometheus)."""

    __tablename__ = "telemetry"
    device_id: Mapped[str] = mapped_column(_NAME, primary_key=True)
    release: Mapped[str] = mapped_column(_REF, default="")
    window_s: Mapped[float] = mapped_column(Float)
    requests: Mapped[int] = mapped_column(BigInteger)
    errors: Mapped[int] = mapped_column(BigInteger)
    refused: Mapped[int] = mapped_column(BigInteger, server_default="0")
    """Predict calls refused for the caller's inputs (in neither requests nor errors)."""
    p50_ms: Mapped[float] = mapped_column(Float)
    p95_ms: Mapped[float] = mapped_column(Float)
    p99_ms: Mapped[float] = mapped_column(Float)
    power_w: Mapped[float | None] = mapped_column(Float)
    energy_per_inference_j: Mapped[float | None] = mapped_column(Float)
    cpu_percent: Mapped[float] = mapped_column(Float)
    memory_bytes: Mapped[int] = mapped_column(BigInteger)
    at_ms: Mapped[int] = mapped_column(BigInteger)
    received_ms: Mapped[int] = mapped_column(BigInteger)


class EventRow(Base):
    __tablename__ = "events"
    __table_args__ = (Index("ix_events_device_id_id", "device_id", "id"),)
    id: Mapped[int] = mapped_column(_ROW_ID, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(_NAME)
    kind: Mapped[str] = mapped_column(String(64))
    release: Mapped[str] = mapped_column(_REF, default="")
    generation: Mapped[int] = mapped_column(BigInteger, default=0)
    phase: Mapped[str | None] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text, default="")
    at_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    received_ms: Mapped[int] = mapped_column(BigInteger)
    seq: Mapped[int] = mapped_column(BigInteger, server_default="0")
    """The device's outbox position; with ``at_ms`` it tells a redelivered event."""


class DesiredRow(Base):
    """The last desired state published per device; ``generation`` only ever grows."""

    __tablename__ = "desired_states"
    device_id: Mapped[str] = mapped_column(_NAME, primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger)
    release: Mapped[str] = mapped_column(_REF)
    rollout_id: Mapped[str] = mapped_column(String(40))
    issued_at_ms: Mapped[int] = mapped_column(BigInteger)


class RolloutRow(Base):
    """One rollout: the engine's state (``rollouts.engine.Rollout``) minus its targets.

    Columns added after the first release carry server defaults, so ``create_schema`` can add
    them to an older database; rows from before staged rollouts read as finished.
    """

    __tablename__ = "rollouts"
    rollout_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    release: Mapped[str] = mapped_column(_REF)  # empty for a rollback to previous releases
    fleet: Mapped[str] = mapped_column(_NAME, index=True)
    strategy: Mapped[str] = mapped_column(String(32))  # the kind: all-at-once|canary|rollback
    created_at_ms: Mapped[int] = mapped_column(BigInteger)
    parameters: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # rollouts.codec
    phase: Mapped[str] = mapped_column(String(16), server_default="succeeded")
    step: Mapped[int] = mapped_column(Integer, server_default="0")
    step_done_at: Mapped[float | None] = mapped_column(Float)
    paused_phase: Mapped[str | None] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, server_default="")
    finished: Mapped[bool] = mapped_column(Boolean, server_default=true(), index=True)
    updated_at_ms: Mapped[int] = mapped_column(BigInteger, server_default="0")


class RolloutTargetRow(Base):
    """One device of a rollout: the engine's ``Target``."""

    __tablename__ = "rollout_targets"
    rollout_id: Mapped[str] = mapped_column(ForeignKey("rollouts.rollout_id"), primary_key=True)
    device_id: Mapped[str] = mapped_column(_NAME, primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16), server_default="sent")
    sent_at: Mapped[float] = mapped_column(Float, server_default="0")
    previous_release: Mapped[str] = mapped_column(_REF, server_default="")
    baseline_p95_ms: Mapped[float | None] = mapped_column(Float)
    reason: Mapped[str] = mapped_column(Text, server_default="")


class RolloutHistoryRow(Base):
    """One timestamped change of a rollout (``rollouts.history.Transition``): its phase, a gate
    decision, or a device's state. Only changes are written, at most ``history.LIMIT`` device
    changes per rollout."""

    __tablename__ = "rollout_history"
    __table_args__ = (Index("ix_rollout_history_rollout_id_id", "rollout_id", "id"),)
    id: Mapped[int] = mapped_column(_ROW_ID, primary_key=True, autoincrement=True)
    rollout_id: Mapped[str] = mapped_column(ForeignKey("rollouts.rollout_id"))
    at_ms: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(16))  # phase | gate | device
    device_id: Mapped[str] = mapped_column(_NAME, default="")
    old: Mapped[str] = mapped_column(String(16), default="")
    new: Mapped[str] = mapped_column(String(16), default="")
    message: Mapped[str] = mapped_column(Text, default="")


class OperatorRow(Base):
    """An operator of the API. Only the sha256 of its bearer token is kept; revoked rows stay."""

    __tablename__ = "operators"
    name: Mapped[str] = mapped_column(_NAME, primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    fleets: Mapped[list[str]] = mapped_column(JSON)  # empty = every fleet
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at_ms: Mapped[int] = mapped_column(BigInteger)
    revoked_at_ms: Mapped[int | None] = mapped_column(BigInteger)


class AuditRow(Base):
    """One operator call that changed something, or was refused (``audit.AuditLog``)."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(_ROW_ID, primary_key=True, autoincrement=True)
    at_ms: Mapped[int] = mapped_column(BigInteger)
    operator: Mapped[str] = mapped_column(_NAME, default="")
    role: Mapped[str] = mapped_column(String(16), default="")
    method: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(_REF, default="")
    fleet: Mapped[str] = mapped_column(_NAME, default="", index=True)
    outcome: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(Text, default="")
    peer: Mapped[str] = mapped_column(String(255), default="")


class EnrolledDeviceRow(Base):
    """A device the registry knows (``edgectl device enroll``): its fleet is the registry's,
    never what the device says. ``state``: enrolled | quarantined | revoked."""

    __tablename__ = "enrolled_devices"
    device_id: Mapped[str] = mapped_column(_NAME, primary_key=True)
    fleet: Mapped[str] = mapped_column(_NAME, index=True)
    labels: Mapped[dict[str, str]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), index=True)
    created_at_ms: Mapped[int] = mapped_column(BigInteger)
    updated_at_ms: Mapped[int] = mapped_column(BigInteger)


class EnrollTokenRow(Base):
    """A one-time enrollment token, by its sha256 (the token itself is never stored)."""

    __tablename__ = "enroll_tokens"
    token_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    device_id: Mapped[str] = mapped_column(_NAME, index=True)
    expires_at_ms: Mapped[int] = mapped_column(BigInteger)
    used_at_ms: Mapped[int | None] = mapped_column(BigInteger)
    created_at_ms: Mapped[int] = mapped_column(BigInteger)


class DeviceCertRow(Base):
    """A device certificate the CA issued; revoked ones make the CRL (kept after a remove)."""

    __tablename__ = "device_certificates"
    serial: Mapped[str] = mapped_column(String(40), primary_key=True)  # hex
    device_id: Mapped[str] = mapped_column(_NAME, index=True)
    not_before_ms: Mapped[int] = mapped_column(BigInteger)
    not_after_ms: Mapped[int] = mapped_column(BigInteger)
    issued_at_ms: Mapped[int] = mapped_column(BigInteger)
    revoked_at_ms: Mapped[int | None] = mapped_column(BigInteger, index=True)
    reason: Mapped[str] = mapped_column(String(32), default="")


class LeaseRow(Base):
    """Who holds a lease (``leasing``: the replica that drives rollouts), until when, and how
    many times it changed hands (the epoch)."""

    __tablename__ = "leases"
    name: Mapped[str] = mapped_column(_NAME, primary_key=True)
    holder: Mapped[str] = mapped_column(String(255))
    expires_at_ms: Mapped[int] = mapped_column(BigInteger)
    epoch: Mapped[int] = mapped_column(BigInteger)


class Database:
    """The engine plus two ways in: ``read()`` and ``write()`` (commits, or rolls back)."""

    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite and parsed.database not in (None, "", ":memory:"):
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = create_engine(url, pool_pre_ping=not self.is_sqlite)
        if self.is_sqlite:
            _tune_sqlite(self.engine)
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(
            self.engine.execution_options(edgefleet_write=True), expire_on_commit=False
        )

    def create_schema(self) -> None:
        """Bring the schema to this version's (Alembic migrations, ``migrating``)."""
        from edgefleet.controller import migrating

        migrating.upgrade(self)

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._read() as session:
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        with self._write() as session, session.begin():
            yield session

    def dispose(self) -> None:
        self.engine.dispose()


def add_missing_columns(conn: Connection) -> None:
    """Add to existing tables the columns the models have and they lack (with their indexes)."""
    inspector = inspect(conn)
    tables = set(inspector.get_table_names())
    for table in Base.metadata.sorted_tables:
        if table.name not in tables:
            continue
        have = {c["name"] for c in inspector.get_columns(table.name)}
        missing = [c for c in table.columns if c.name not in have]
        for column in missing:
            ddl = CreateColumn(column).compile(dialect=conn.dialect)
            conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {ddl}")
            log.info("schema: added column %s.%s", table.name, column.name)
        if missing:
            for index in table.indexes:
                index.create(conn, checkfirst=True)


def _tune_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the sqlite3 module, so ``begin`` below decides.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("edgefleet_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
