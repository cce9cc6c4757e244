"""Operators of the API and their bearer tokens: roles, fleet scopes, the SQL store.

A token is 32 random bytes (``secrets``), shown once when the operator is made; the database
keeps only its sha256, so a copy of the database lets nobody in. Roles are ordered, each one
allowed what the one below may do and more: viewer < releaser < deployer < admin. An operator
with fleets is confined to them (``Operator.covers``). Revoked operators stay, for the audit log.

On a first start (no operator at all) the controller makes ``admin`` and writes its token to
``<data-dir>/admin.token`` (0600); ``auth`` checks every call against this store.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError as SqlIntegrityError

from edgefleet.common import types as t
from edgefleet.common.artifacts import atomic_write
from edgefleet.common.errors import AlreadyExistsError, InvalidInputError, NotFoundError
from edgefleet.controller.db import Database, OperatorRow

log = logging.getLogger(__name__)

TOKEN_PREFIX = "efo_"  # noqa: S105  (a prefix, not a secret)
ADMIN = "admin"
ADMIN_TOKEN_FILE = "admin.token"  # noqa: S105  (a file name)


class Role(StrEnum):
    VIEWER = "viewer"
    RELEASER = "releaser"
    DEPLOYER = "deployer"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls(text.strip().lower())
        except ValueError:
            names = ", ".join(r.value for r in cls)
            raise InvalidInputError(f"unknown role {text!r}: use one of {names}") from None


@dataclass(frozen=True)
class Operator:
    name: str
    role: Role
    fleets: tuple[str, ...] = ()
    """Fleets this operator may see and act on; empty = every fleet."""
    created_at_ms: int = 0
    revoked_at_ms: int | None = None

    @property
    def scoped(self) -> bool:
        return bool(self.fleets)

    def covers(self, fleet: str) -> bool:
        return not self.fleets or fleet in self.fleets


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class OperatorStore:
    def __init__(self, db: Database, *, clock: Callable[[], int]) -> None:
        self._db = db
        self._clock = clock

    def add(self, name: str, role: Role, *, fleets: Iterable[str] = ()) -> tuple[Operator, str]:
        """Make an operator; return it and its token (the only time the token exists here)."""
        t.validate_name("operator", name)
        scope = tuple(sorted({t.validate_name("fleet", f) for f in fleets}))
        token = new_token()
        row = OperatorRow(
            name=name,
            role=role.value,
            fleets=list(scope),
            token_sha256=token_hash(token),
            created_at_ms=self._clock(),
            revoked_at_ms=None,
        )
        try:
            with self._db.write() as session:
                if session.get(OperatorRow, name) is not None:
                    raise AlreadyExistsError("operator", name)
                session.add(row)
        except SqlIntegrityError:
            raise AlreadyExistsError("operator", name) from None
        log.info("operator %s added (role %s, fleets %s)", name, role, ",".join(scope) or "all")
        return _record(row), token

    def list_operators(self) -> list[Operator]:
        with self._db.read() as session:
            rows = session.scalars(select(OperatorRow).order_by(OperatorRow.name))
            return [_record(r) for r in rows]

    def revoke(self, name: str) -> Operator:
        """Revoke ``name``'s token from now on; revoking twice keeps the first time."""
        with self._db.write() as session:
            row = session.get(OperatorRow, name)
            if row is None:
                raise NotFoundError("operator", name)
            if row.revoked_at_ms is None:
                row.revoked_at_ms = self._clock()
                log.info("operator %s revoked", name)
            return _record(row)

    def by_token(self, token: str) -> Operator | None:
        """The operator holding ``token`` (revoked ones too), or None."""
        with self._db.read() as session:
            row = session.scalars(
                select(OperatorRow).where(OperatorRow.token_sha256 == token_hash(token))
            ).first()
            return None if row is None else _record(row)

    def count(self) -> int:
        with self._db.read() as session:
            return int(session.scalar(select(func.count()).select_from(OperatorRow)) or 0)

    def bootstrap(self, token_file: Path) -> bool:
        """With no operator yet, make ``admin`` and write its token to ``token_file`` (0600).

        Returns whether it did. The token goes to the file only, never to a log line.
        """
        if self.count():
            return False
        try:
            _, token = self.add(ADMIN, Role.ADMIN)
        except AlreadyExistsError:  # another replica made it just now
            return False
        write_token(token_file, token)
        log.info("first start: operator %s made; its token is in %s", ADMIN, token_file)
        return True


def write_token(path: Path, token: str) -> None:
    """Write a token file readable by its owner only: ``atomic_write``'s temporary file is made
    0600 (``mkstemp``) before any byte is written, and renamed into place."""
    atomic_write(path, token.encode() + b"\n")
    path.chmod(0o600)


def _record(row: OperatorRow) -> Operator:
    return Operator(
        name=row.name,
        role=Role(row.role),
        fleets=tuple(row.fleets or ()),
        created_at_ms=row.created_at_ms,
        revoked_at_ms=row.revoked_at_ms,
    )
