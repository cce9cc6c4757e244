"""Schema migrations (Alembic), on SQLite and on the machine's PostgreSQL.

The migrations at head must build exactly the schema the models describe (no drift), a
database at the first released schema must upgrade with its data, and one made before
migrations existed must be adopted.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from edgefleet.controller import migrating
from edgefleet.controller.db import Base, Database
from edgefleet.demo.processes import child_env, script

PG_ADMIN = os.environ.get(
    "EDGEFLEET_TEST_PG_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def _pg_available() -> str:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -e '.[postgres]')"
    try:
        engine = create_engine(PG_ADMIN)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        return f"PostgreSQL not reachable at {make_url(PG_ADMIN).host}: {exc.__class__.__name__}"
    return ""


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database of each engine."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'c.db'}"
        return
    if why := _pg_available():
        pytest.skip(why)
    name = f"ef_mig_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_migrations_at_head_build_exactly_the_models(url: str) -> None:
    db = Database(url)
    try:
        assert migrating.upgrade(db) == migrating.head()
        with db.engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            drift = compare_metadata(ctx, Base.metadata)
    finally:
        db.dispose()
    assert drift == [], "db.py changed without a migration (alembic revision --autogenerate)"


def test_a_database_at_the_first_schema_keeps_its_data(url: str) -> None:
    db = Database(url)
    try:
        cfg = migrating.config()
        with db.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0001")
            conn.execute(
                text(
                    "INSERT INTO devices (device_id, fleet, labels, active_release, "
                    "previous_release, target_release, generation_applied, last_error, "
                    "predict_endpoint, agent_version, active_manifest_digest, status_at_ms, "
                    "first_seen_ms, last_seen_ms) VALUES ('d1', 'f', '{}', 'digits:1.0.0', '', "
                    "'', 3, '', '', '0.1.0', '', 0, 1, 2)"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO events (device_id, kind, release, generation, message, at_ms, "
                    "received_ms) VALUES ('d1', 'activated', 'digits:1.0.0', 3, 'kept', 5, 6)"
                )
            )
        assert migrating.upgrade(db) == migrating.head()
        with db.engine.connect() as conn:
            device = conn.execute(
                text("SELECT fleet, active_release, generation_applied, status_seq FROM devices")
            ).one()
            event = conn.execute(text("SELECT message, seq FROM events")).one()
    finally:
        db.dispose()
    assert tuple(device) == ("f", "digits:1.0.0", 3, 0)
    assert tuple(event) == ("kept", 0)


def test_a_database_from_before_migrations_is_adopted(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'legacy.db'}"
    db = Database(url)
    cfg = migrating.config()
    try:
        with db.engine.begin() as conn:  # the first schema, as create_all made it, no version
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0001")
            conn.execute(text("DROP TABLE alembic_version"))
            conn.execute(
                text(
                    "INSERT INTO events (device_id, kind, release, generation, message, at_ms, "
                    "received_ms) VALUES ('d1', 'activated', '', 3, 'kept', 5, 6)"
                )
            )
        assert migrating.upgrade(db) == migrating.head()
        with db.engine.connect() as conn:
            kept = conn.execute(text("SELECT message, seq FROM events")).one()
            version = migrating.current(conn)
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            drift = compare_metadata(ctx, Base.metadata)
    finally:
        db.dispose()
    assert tuple(kept) == ("kept", 0)
    assert version == migrating.head()
    assert drift == []


def test_edge_controller_migrate_upgrades_and_then_has_nothing_to_do(tmp_path: Path) -> None:
    argv = [*script("edge-controller", "edgefleet.controller.cli"), "migrate"]
    argv += ["--data-dir", str(tmp_path / "data")]
    first = subprocess.run(
        argv, check=False, capture_output=True, text=True, env=child_env(), timeout=120
    )
    again = subprocess.run(
        argv, check=False, capture_output=True, text=True, env=child_env(), timeout=120
    )
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == f"schema migrated from nothing to {migrating.head()}"
    assert again.stdout.strip() == f"schema at {migrating.head()} (newest); nothing to do"
