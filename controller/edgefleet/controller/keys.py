"""Signing keys: private halves as 0600 files under ``<data-dir>/keys``, public halves in the DB.

A private key never enters the database or a log line; the database says which key is active.
``init`` is idempotent: it returns the active key unless asked to rotate. Rotation keeps the old
public keys listed, so agents can trust old and new while releases signed by either are live.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select, update

from edgefleet.common import signing
from edgefleet.controller.db import Database, KeyRow
from edgefleet.controller.errors import NoSigningKeyError
from edgefleet.controller.records import SigningKey

log = logging.getLogger(__name__)


class KeyRing:
    def __init__(self, db: Database, keys_dir: Path, *, clock: Callable[[], int]) -> None:
        self._db = db
        self._dir = keys_dir
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: tuple[str, Ed25519PrivateKey] | None = None

    def init(self, *, rotate: bool = False) -> SigningKey:
        """Return the active key (``created=False``), or make one (and make it active)."""
        with self._lock:
            current = self._active_row()
            if current is not None and not rotate:
                return _record(current)
            private = signing.generate()
            kid = signing.key_id(private.public_key())
            self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            # The file first: a key the DB calls active must always have its private half.
            signing.save_private_key(private, self._key_path(kid))
            row = KeyRow(
                key_id=kid,
                public_key_pem=signing.public_pem(private.public_key()),
                created_at_ms=self._clock(),
                active=True,
            )
            with self._db.write() as session:
                session.execute(update(KeyRow).values(active=False))
                session.add(row)
            self._cache = (kid, private)
            log.info("new signing key %s (rotated: %s)", kid, current is not None)
            return _record(row, created=True)

    def list_keys(self) -> list[SigningKey]:
        with self._db.read() as session:
            rows = session.scalars(select(KeyRow).order_by(KeyRow.created_at_ms, KeyRow.key_id))
            return [_record(r) for r in rows]

    def active(self) -> tuple[str, Ed25519PrivateKey]:
        """The active key id and private key; ``NoSigningKeyError`` when there is none."""
        with self._lock:
            row = self._active_row()
            if row is None:
                raise NoSigningKeyError("no signing key: run `edgectl keys init`")
            if self._cache is not None and self._cache[0] == row.key_id:
                return self._cache
            path = self._key_path(row.key_id)
            if not path.is_file():
                raise NoSigningKeyError(
                    f"the private key of active signing key {row.key_id} is missing from "
                    f"{self._dir}: restore it or run `edgectl keys init --rotate`"
                )
            self._check_mode(path)
            self._cache = (row.key_id, signing.load_private_key(path))
            return self._cache

    def _active_row(self) -> KeyRow | None:
        with self._db.read() as session:
            stmt = select(KeyRow).where(KeyRow.active).order_by(KeyRow.created_at_ms.desc())
            return session.scalars(stmt).first()

    def _key_path(self, kid: str) -> Path:
        return self._dir / f"{kid}.pem"

    @staticmethod
    def _check_mode(path: Path) -> None:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            log.warning("private key file %s is readable by others (mode %o)", path, mode)


def _record(row: KeyRow, *, created: bool = False) -> SigningKey:
    return SigningKey(
        key_id=row.key_id,
        public_key_pem=row.public_key_pem,
        created_at_ms=row.created_at_ms,
        active=row.active,
        created=created,
    )
