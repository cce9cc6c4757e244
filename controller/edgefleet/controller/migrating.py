"""Schema migrations: bring a database to the newest Alembic revision, keeping its data.

Three cases, decided from what the database holds:

* empty: every revision runs, from the first schema on (``migrations/versions``);
* at some revision (an ``alembic_version`` table): the revisions after it run;
* made before migrations existed (tables, no ``alembic_version``): the tables and columns it
  lacks are added (as controllers before migrations did on every start), then it is stamped
  with the newest revision.

One transaction (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: transactional DDL), so a failed
upgrade leaves the database as it was. Two controllers starting together on one PostgreSQL
serialise on an advisory lock.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from edgefleet.controller.db import Base, Database, add_missing_columns

log = logging.getLogger(__name__)
logging.getLogger("alembic").setLevel(logging.WARNING)  # one line per migration is ours to log

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_LOCK_KEY = 0x6566_6D69  # "efmi": the advisory lock two starting controllers queue on


def config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def head() -> str:
    revision = ScriptDirectory.from_config(config()).get_current_head()
    assert revision is not None, "no migrations"
    return revision


def current(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def upgrade(db: Database) -> str:
    """Migrate ``db`` to the newest revision; return it."""
    cfg = config()
    with db.engine.execution_options(edgefleet_write=True).begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
        cfg.attributes["connection"] = conn
        tables = set(inspect(conn).get_table_names())
        before = current(conn)
        if tables - {"alembic_version"} and before is None:
            log.info("schema: a database from before migrations; adding what it lacks")
            Base.metadata.create_all(conn)
            add_missing_columns(conn)
            command.stamp(cfg, "head")
        else:
            command.upgrade(cfg, "head")
        after = current(conn)
    if after != before:
        log.info("schema: migrated from %s to %s", before or "nothing", after)
    return after or ""
