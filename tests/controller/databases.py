"""Which database the controller tests run on: SQLite in the test's data dir (default), or,
with ``EDGEFLEET_TEST_DB=postgresql+psycopg://USER@HOST:PORT/DB``, a fresh PostgreSQL database
per controller on that server (made here, dropped when the session ends). ``make test`` runs
the controller tests both ways."""

from __future__ import annotations

import os
import uuid

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

ENV = "EDGEFLEET_TEST_DB"
_made: list[str] = []


def server() -> str:
    return os.environ.get(ENV, "")


def fresh_url() -> str:
    """ "" (SQLite in the data dir) unless ``EDGEFLEET_TEST_DB`` names a server."""
    base = server()
    if not base:
        return ""
    name = f"ef_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        pytest.skip(f"{ENV} names a PostgreSQL that does not answer: {exc.orig}")
    finally:
        admin.dispose()
    _made.append(name)
    return make_url(base).set(database=name).render_as_string(hide_password=False)


def drop_all() -> None:
    """Drop every database ``fresh_url`` made (end of the test session)."""
    if not _made:
        return
    admin = create_engine(server(), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            for name in _made:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()
    _made.clear()
