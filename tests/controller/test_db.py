"""The same ORM models on SQLite (what the tests run) and PostgreSQL (what a big fleet runs)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateTable

from edgefleet.controller.db import Base, Database


def test_the_schema_compiles_for_postgresql() -> None:
    ddl = "\n".join(
        str(CreateTable(table).compile(dialect=postgresql.dialect()))  # type: ignore[no-untyped-call]
        for table in Base.metadata.sorted_tables
    )
    assert "BIGSERIAL" in ddl  # auto-increment ids are 64-bit there
    assert "BYTEA" in ddl and "JSON" in ddl


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'nested' / 'c.db'}")
    try:
        db.create_schema()
        with db.write() as session:
            mode = session.execute(text("PRAGMA journal_mode")).scalar()
            timeout = session.execute(text("PRAGMA busy_timeout")).scalar()
    finally:
        db.dispose()
    assert (mode, timeout) == ("wal", 10_000)
