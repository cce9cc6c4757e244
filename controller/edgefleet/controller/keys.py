"""Signing keys: private halves as 0600 files under ``<data-dir>/keys``, public halves in the DB.

A private key never enters the database or a log line; the database says which key is active.
``init`` is idempotent: it returns the active key unless asked to rotate. Rotation keeps the old
key in the agents' trust bundle (``bundle``), trusted for fresh messages through an overlap
window (``overlap_ms``, by default the desired-state lifetime, so every desired state it signed
expires inside it) and for installed slots until it is revoked; ``revoke`` takes a key out, and
refuses the active key, the last trusted one, and (unless forced) a key that signed a release a
device still runs, was last told to run, or falls back to.

The bundle is a function of the key rows: its version counts key changes (keys made plus keys
revoked), so it only grows, survives a restart and needs no row of its own. It is signed by
every trusted key whose private half is here (TUF-style: an agent that knows only the old key,
or only the new one, takes it). Listeners (``on_change``) hear of every change, so the trust
publisher sends the new bundle at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select, update

from edgefleet.common import signing, trustbundle
from edgefleet.common.errors import InvalidInputError, NotFoundError
from edgefleet.common.trustbundle import BundleKey, TrustBundle
from edgefleet.controller.db import Database, DesiredRow, DeviceRow, KeyRow, ReleaseRow
from edgefleet.controller.errors import NoSigningKeyError

log = logging.getLogger(__name__)

DEFAULT_OVERLAP_MS = 30 * 24 * 3600 * 1000


@dataclass(frozen=True)
class SigningKey:
    key_id: str
    public_key_pem: str
    created_at_ms: int
    active: bool
    created: bool = False  # True only in the answer to the InitKey that made it
    retired_at_ms: int = 0  # when a rotation replaced it
    revoked_at_ms: int = 0  # when it was revoked (0: trusted)
    trusted_until_ms: int = 0  # end of its overlap window in the trust bundle (0: open)


class KeyRing:
    def __init__(
        self,
        db: Database,
        keys_dir: Path,
        *,
        clock: Callable[[], int],
        overlap_ms: int = DEFAULT_OVERLAP_MS,
    ) -> None:
        self._db = db
        self._dir = keys_dir
        self._clock = clock
        self._overlap_ms = overlap_ms
        self._lock = threading.Lock()
        self._cache: tuple[str, Ed25519PrivateKey] | None = None
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (no arguments, quickly) after each key made or revoked."""
        self._listeners.append(listener)

    def init(self, *, rotate: bool = False) -> SigningKey:
        """Return the active key (``created=False``), or make one (and make it active)."""
        with self._lock:
            current = self._active_row()
            if current is not None and not rotate:
                return self._record(current)
            private = signing.generate()
            kid = signing.key_id(private.public_key())
            self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            # The file first: a key the DB calls active must always have its private half.
            signing.save_private_key(private, self._key_path(kid))
            now = self._clock()
            row = KeyRow(
                key_id=kid,
                public_key_pem=signing.public_pem(private.public_key()),
                created_at_ms=now,
                active=True,
                retired_at_ms=0,
                revoked_at_ms=0,
            )
            with self._db.write() as session:
                session.execute(
                    update(KeyRow).where(KeyRow.active).values(active=False, retired_at_ms=now)
                )
                session.add(row)
            self._cache = (kid, private)
            log.info("new signing key %s (rotated: %s)", kid, current is not None)
            record = self._record(row, created=True)
        self._changed()
        return record

    def revoke(self, kid: str, *, force: bool = False) -> SigningKey:
        """Take ``kid`` out of the trust bundle; ``InvalidInputError`` when that is unsafe."""
        with self._lock:
            with self._db.read() as session:
                row = session.get(KeyRow, kid)
                trusted = session.scalars(select(KeyRow).where(KeyRow.revoked_at_ms == 0)).all()
            if row is None:
                raise NotFoundError("signing key", kid)
            if row.revoked_at_ms:
                return self._record(row)
            if row.active:
                raise InvalidInputError(
                    f"{kid} is the active signing key: rotate first (edgectl keys init --rotate)"
                )
            if len(trusted) <= 1:
                raise InvalidInputError(f"{kid} is the only trusted key")
            in_use = self.releases_signed_by(kid)
            if in_use and not force:
                raise InvalidInputError(
                    f"devices still run or fall back to releases signed by {kid} "
                    f"({', '.join(in_use[:5])}): deploy releases signed by the active key "
                    "first, or --force (those devices lose them at their next restart)"
                )
            with self._db.write() as session:
                session.execute(
                    update(KeyRow).where(KeyRow.key_id == kid).values(revoked_at_ms=self._clock())
                )
            with self._db.read() as session:
                row = session.get(KeyRow, kid)
            assert row is not None
            log.warning("signing key %s revoked", kid)
            record = self._record(row)
        self._changed()
        return record

    def releases_signed_by(self, kid: str) -> list[str]:
        """Releases signed by ``kid`` that a device runs, falls back to or was last sent."""
        with self._db.read() as session:
            refs: set[str] = set()
            for active, previous in session.execute(
                select(DeviceRow.active_release, DeviceRow.previous_release)
            ):
                refs.update(r for r in (active, previous) if r)
            refs.update(r for r in session.scalars(select(DesiredRow.release)) if r)
            signed = session.execute(
                select(ReleaseRow.name, ReleaseRow.version).where(ReleaseRow.key_id == kid)
            )
            return sorted(f"{n}:{v}" for n, v in signed if f"{n}:{v}" in refs)

    def list_keys(self) -> list[SigningKey]:
        with self._db.read() as session:
            rows = session.scalars(select(KeyRow).order_by(KeyRow.created_at_ms, KeyRow.key_id))
            return [self._record(r) for r in rows]

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

    # the trust bundle

    def bundle(self) -> TrustBundle | None:
        """The agents' trust bundle as the key rows say (None before the first key)."""
        with self._db.read() as session:
            rows = list(session.scalars(select(KeyRow).order_by(KeyRow.created_at_ms)))
        active = [r for r in rows if r.active]
        if not active:
            return None
        trusted = [r for r in rows if not r.revoked_at_ms]
        revoked = [r for r in rows if r.revoked_at_ms]
        changed = max([r.created_at_ms for r in rows] + [r.revoked_at_ms for r in revoked])
        return TrustBundle(
            version=len(rows) + len(revoked),
            keys=tuple(
                BundleKey(
                    key_id=r.key_id,
                    public_key_pem=r.public_key_pem,
                    not_before_ms=r.created_at_ms,
                    not_after_ms=self._trusted_until(r),
                )
                for r in trusted
            ),
            revoked=tuple(r.key_id for r in revoked),
            active_key_id=active[0].key_id,
            issued_at_ms=changed,
        )

    def sealed_bundle(self) -> bytes | None:
        """The bundle signed by every trusted key whose private half is here."""
        bundle = self.bundle()
        if bundle is None:
            return None
        signers = []
        for k in bundle.keys:
            path = self._key_path(k.key_id)
            if path.is_file():
                signers.append(signing.load_private_key(path))
        if not signers:
            raise NoSigningKeyError(f"no private key of the trust bundle is in {self._dir}")
        return trustbundle.seal_bundle(bundle, signers)

    def _trusted_until(self, row: KeyRow) -> int:
        if row.active or not row.retired_at_ms or self._overlap_ms <= 0:
            return 0
        return row.retired_at_ms + self._overlap_ms

    def _changed(self) -> None:
        for listener in self._listeners:
            try:
                listener()
            except Exception:
                log.exception("key change listener failed")

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

    def _record(self, row: KeyRow, *, created: bool = False) -> SigningKey:
        return SigningKey(
            key_id=row.key_id,
            public_key_pem=row.public_key_pem,
            created_at_ms=row.created_at_ms,
            active=row.active,
            created=created,
            retired_at_ms=row.retired_at_ms or 0,
            revoked_at_ms=row.revoked_at_ms or 0,
            trusted_until_ms=self._trusted_until(row),
        )
