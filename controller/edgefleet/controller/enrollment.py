"""The device registry's identity side: enrollment tokens, issued certificates, revocation.

``edgectl device enroll`` registers a device (its fleet is the registry's from then on) and
hands out a one-time token, kept only as its sha256, that expires after minutes. The agent
trades it and a CSR for a certificate (``enroll``); later it renews with its current
certificate (``renew``). Enrolling again (a device whose certificate lapsed while it was away,
or a factory reset) supersedes the device's older certificates: they go on the CRL. Revoking
puts every certificate of the device on the CRL and marks it revoked (rollouts skip revoked
and quarantined devices: ``rollouts.store``'s ``fleet_devices``); removing also forgets it.

The CRL file is rewritten in the same call as the database change that revoked a serial.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from edgefleet.common import identities
from edgefleet.common.errors import InvalidInputError, NotFoundError
from edgefleet.common.types import validate_name
from edgefleet.controller import brokerconfig
from edgefleet.controller.config import PkiSettings
from edgefleet.controller.db import (
    Database,
    DeviceCertRow,
    DeviceRow,
    EnrolledDeviceRow,
    EnrollTokenRow,
    PresenceRow,
    TelemetryRow,
)
from edgefleet.controller.errors import IdentityRefusedError
from edgefleet.controller.pki import CertificateAuthority, Issued

log = logging.getLogger(__name__)

TOKEN_PREFIX = "ef1."  # noqa: S105 (a format tag, not a secret)
MAX_TOKEN_TTL_S = 7 * 24 * 3600.0


class IdentityState(StrEnum):
    ENROLLED = "enrolled"
    QUARANTINED = "quarantined"
    REVOKED = "revoked"
    REMOVED = "removed"  # only in the answer to a remove


SKIPPED_BY_ROLLOUTS = (IdentityState.QUARANTINED.value, IdentityState.REVOKED.value)


@dataclass(frozen=True)
class Identity:
    device_id: str
    fleet: str
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    state: IdentityState = IdentityState.ENROLLED
    cert_serial: str = ""
    cert_not_after_ms: int = 0
    created_at_ms: int = 0


@dataclass(frozen=True)
class Token:
    identity: Identity
    token: str
    expires_at_ms: int


@dataclass(frozen=True)
class Certificate:
    """What an enrolled or renewed device gets back."""

    device_id: str
    fleet: str
    pem: bytes
    ca_bundle_pem: bytes
    not_after_ms: int


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _ms(when: dt.datetime) -> int:
    return int(when.timestamp() * 1000)


class Enrollment:
    """``clock``: wall-clock seconds (tests pass a fake one to step past expiries)."""

    def __init__(
        self,
        db: Database,
        ca: CertificateAuthority,
        *,
        crl_path: Path,
        clock: Callable[[], float],
        cert_lifetime_s: float,
        token_ttl_s: float,
    ) -> None:
        self._db = db
        self.ca = ca
        self.crl_path = crl_path
        self._clock = clock
        self._lifetime = dt.timedelta(seconds=cert_lifetime_s)
        self._token_ttl_s = token_ttl_s
        self._crl_lock = threading.Lock()
        self.on_change: Callable[[], None] = lambda: None
        """Runs after the set of devices or the CRL changed (``--broker-dir`` refreshes)."""

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self._clock(), tz=dt.UTC)

    # operator side

    def enroll_device(
        self, device_id: str, *, fleet: str, labels: Mapping[str, str], token_ttl_s: float = 0
    ) -> Token:
        """Register (or re-register) a device and make its one-time token."""
        validate_name("device", device_id)
        validate_name("fleet", fleet)
        if device_id == identities.CONTROLLER_IDENTITY:
            raise InvalidInputError(f"{device_id!r} is the controller's own identity")
        ttl = token_ttl_s or self._token_ttl_s
        if not 0 < ttl <= MAX_TOKEN_TTL_S:
            raise InvalidInputError(f"token lifetime must be 1 s to 7 days, got {ttl:g} s")
        now_ms = _ms(self.now())
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        expires = now_ms + int(ttl * 1000)
        with self._db.write() as session:
            row = session.get(EnrolledDeviceRow, device_id)
            if row is None:
                row = EnrolledDeviceRow(
                    device_id=device_id, state=IdentityState.ENROLLED.value, created_at_ms=now_ms
                )
                session.add(row)
            elif row.fleet != fleet:
                raise InvalidInputError(
                    f"device {device_id} is in fleet {row.fleet}; `edgectl device remove "
                    f"{device_id}` first to enroll it in {fleet}"
                )
            elif row.state == IdentityState.REVOKED.value:
                raise InvalidInputError(
                    f"device {device_id} is revoked; `edgectl device remove {device_id}` first "
                    "to enroll it again under that id"
                )
            row.fleet = fleet
            row.labels = dict(labels)
            row.updated_at_ms = now_ms
            # One live token per device: a new one replaces any not yet used.
            session.execute(
                delete(EnrollTokenRow).where(
                    EnrollTokenRow.device_id == device_id, EnrollTokenRow.used_at_ms.is_(None)
                )
            )
            session.add(
                EnrollTokenRow(
                    token_sha256=token_hash(token),
                    device_id=device_id,
                    expires_at_ms=expires,
                    created_at_ms=now_ms,
                )
            )
            session.flush()
            identity = _identity(session, row)
        log.info("device %s enrolled in fleet %s; token valid %.0f s", device_id, fleet, ttl)
        self._changed()
        return Token(identity, token, expires)

    def revoke(self, device_id: str) -> Identity:
        """Mark the device revoked and put all its certificates on the CRL."""
        with self._db.write() as session:
            row = _get(session, device_id)
            row.state = IdentityState.REVOKED.value
            row.updated_at_ms = now_ms = _ms(self.now())
            _revoke_certs(session, device_id, now_ms=now_ms, reason="revoked")
            session.execute(delete(EnrollTokenRow).where(EnrollTokenRow.device_id == device_id))
            identity = _identity(session, row)
        self.write_crl()
        log.warning("device %s revoked", device_id)
        return identity

    def quarantine(self, device_id: str, *, lift: bool = False) -> Identity:
        """Keep the device's identity but leave it out of rollouts (``lift``: undo that)."""
        with self._db.write() as session:
            row = _get(session, device_id)
            if row.state == IdentityState.REVOKED.value:
                raise InvalidInputError(f"device {device_id} is revoked")
            row.state = (IdentityState.ENROLLED if lift else IdentityState.QUARANTINED).value
            row.updated_at_ms = _ms(self.now())
            identity = _identity(session, row)
        log.warning("device %s %s", device_id, "back in rollouts" if lift else "quarantined")
        return identity

    def remove(self, device_id: str) -> Identity:
        """Revoke the device's certificates and forget it (its issued desired generations stay,
        so a device enrolled again under this id never sees a generation go back)."""
        with self._db.write() as session:
            row = _get(session, device_id)
            identity = _identity(session, row)
            _revoke_certs(session, device_id, now_ms=_ms(self.now()), reason="removed")
            session.execute(delete(EnrollTokenRow).where(EnrollTokenRow.device_id == device_id))
            for table in (PresenceRow, TelemetryRow, DeviceRow):
                session.execute(delete(table).where(table.device_id == device_id))
            session.delete(row)
        self.write_crl()
        log.warning("device %s removed", device_id)
        return replace(identity, state=IdentityState.REMOVED)

    def acl_devices(self) -> list[tuple[str, str]]:
        """(device, fleet) of every device the broker should let in: all but the revoked."""
        return [
            (i.device_id, i.fleet)
            for i in self.list_identities()
            if i.state != IdentityState.REVOKED
        ]

    def list_identities(self, fleet: str = "") -> list[Identity]:
        stmt = select(EnrolledDeviceRow).order_by(
            EnrolledDeviceRow.fleet, EnrolledDeviceRow.device_id
        )
        if fleet:
            stmt = stmt.where(EnrolledDeviceRow.fleet == fleet)
        with self._db.read() as session:
            return [_identity(session, r) for r in session.scalars(stmt)]

    # device side

    def enroll(self, token: str, csr_der: bytes) -> Certificate:
        """A certificate for the holder of a valid, unused token; the token is spent."""
        now = self.now()
        now_ms = _ms(now)
        with self._db.write() as session:
            tok = session.get(EnrollTokenRow, token_hash(token))
            if tok is None:
                raise IdentityRefusedError("unknown enrollment token")
            if tok.used_at_ms is not None:
                raise IdentityRefusedError("enrollment token already used: ask for a new one")
            if tok.expires_at_ms <= now_ms:
                raise IdentityRefusedError("enrollment token expired: ask for a new one")
            row = session.get(EnrolledDeviceRow, tok.device_id)
            if row is None or row.state == IdentityState.REVOKED.value:
                raise IdentityRefusedError(f"device {tok.device_id} may not enroll")
            # The CSR is checked (and may fail) before the token is spent.
            issued = self.ca.issue_device(
                csr_der, device_id=row.device_id, fleet=row.fleet, lifetime=self._lifetime, now=now
            )
            tok.used_at_ms = now_ms
            superseded = _revoke_certs(session, row.device_id, now_ms=now_ms, reason="superseded")
            _record(session, row.device_id, issued, now_ms=now_ms)
            result = self._certificate(row, issued)
        if superseded:
            self.write_crl()
        log.info("device %s enrolled: certificate %x", row.device_id, issued.serial)
        return result

    def renew(self, cert_pem: bytes, csr_der: bytes, *, proof: bytes | None) -> Certificate:
        """A certificate for a new key, for a device that holds a valid certificate.

        ``proof`` is the current key's signature over the CSR; ``None`` when the caller has
        already seen the certificate's key in an mTLS handshake.
        """
        now = self.now()
        cert = identities.load_cert(cert_pem)
        ident = self.ca.check(cert, now=now)
        if proof is not None and not identities.check_renewal_proof(cert, csr_der, proof):
            raise IdentityRefusedError("renewal proof does not verify with the certificate's key")
        now_ms = _ms(now)
        with self._db.write() as session:
            known = session.get(DeviceCertRow, format(ident.serial, "x"))
            if known is None or known.device_id != ident.device_id:
                raise IdentityRefusedError(f"certificate {ident.serial:x} is not on record")
            if known.revoked_at_ms is not None:
                raise IdentityRefusedError(f"certificate {ident.serial:x} is revoked")
            row = session.get(EnrolledDeviceRow, ident.device_id)
            if row is None or row.state == IdentityState.REVOKED.value:
                raise IdentityRefusedError(f"device {ident.device_id} may not renew")
            issued = self.ca.issue_device(
                csr_der, device_id=row.device_id, fleet=row.fleet, lifetime=self._lifetime, now=now
            )
            _record(session, row.device_id, issued, now_ms=now_ms)
            result = self._certificate(row, issued)
        log.info("device %s renewed: certificate %x", row.device_id, issued.serial)
        return result

    def check_certificate(self, cert_pem: bytes) -> identities.CertIdentity:
        """The identity of a current, unrevoked certificate of an enrolled device."""
        ident = self.ca.check(identities.load_cert(cert_pem), now=self.now())
        with self._db.read() as session:
            known = session.get(DeviceCertRow, format(ident.serial, "x"))
            row = session.get(EnrolledDeviceRow, ident.device_id)
            if known is None or known.revoked_at_ms is not None or row is None:
                raise IdentityRefusedError(f"certificate {ident.serial:x} is revoked or unknown")
            if row.state == IdentityState.REVOKED.value:
                raise IdentityRefusedError(f"device {ident.device_id} is revoked")
        return ident

    # the CRL

    def revoked(self) -> list[tuple[int, dt.datetime]]:
        """(serial, revoked at) of every revoked certificate not yet expired."""
        now_ms = _ms(self.now())
        stmt = select(DeviceCertRow.serial, DeviceCertRow.revoked_at_ms).where(
            DeviceCertRow.revoked_at_ms.is_not(None), DeviceCertRow.not_after_ms > now_ms
        )
        with self._db.read() as session:
            return [
                (int(serial, 16), dt.datetime.fromtimestamp((at or 0) / 1000, tz=dt.UTC))
                for serial, at in session.execute(stmt.order_by(DeviceCertRow.serial))
            ]

    def write_crl(self) -> None:
        with self._crl_lock:
            self.ca.write_crl(self.crl_path, self.revoked(), now=self.now())
        self._changed()

    def _changed(self) -> None:
        try:
            self.on_change()
        except Exception:  # the registry changed all the same; the files catch up next time
            log.exception("could not refresh the broker's files")

    def _certificate(self, row: EnrolledDeviceRow, issued: Issued) -> Certificate:
        return Certificate(
            device_id=row.device_id,
            fleet=row.fleet,
            pem=issued.pem,
            ca_bundle_pem=self.ca.bundle_pem,
            not_after_ms=_ms(issued.not_after),
        )


def _get(session: Session, device_id: str) -> EnrolledDeviceRow:
    row = session.get(EnrolledDeviceRow, device_id)
    if row is None:
        raise NotFoundError("enrolled device", device_id)
    return row


def _record(session: Session, device_id: str, issued: Issued, *, now_ms: int) -> None:
    session.add(
        DeviceCertRow(
            serial=format(issued.serial, "x"),
            device_id=device_id,
            not_before_ms=_ms(issued.not_before),
            not_after_ms=_ms(issued.not_after),
            issued_at_ms=now_ms,
        )
    )


def _revoke_certs(session: Session, device_id: str, *, now_ms: int, reason: str) -> int:
    """Revoke the device's certificates that are neither revoked nor expired; how many."""
    result = session.execute(
        update(DeviceCertRow)
        .where(
            DeviceCertRow.device_id == device_id,
            DeviceCertRow.revoked_at_ms.is_(None),
            DeviceCertRow.not_after_ms > now_ms,
        )
        .values(revoked_at_ms=now_ms, reason=reason)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def _identity(session: Session, row: EnrolledDeviceRow) -> Identity:
    newest = session.scalars(
        select(DeviceCertRow)
        .where(DeviceCertRow.device_id == row.device_id)
        .order_by(DeviceCertRow.issued_at_ms.desc(), DeviceCertRow.not_after_ms.desc())
        .limit(1)
    ).first()
    return Identity(
        device_id=row.device_id,
        fleet=row.fleet,
        labels=MappingProxyType(dict(row.labels or {})),
        state=IdentityState(row.state),
        cert_serial=newest.serial if newest is not None else "",
        cert_not_after_ms=newest.not_after_ms if newest is not None else 0,
        created_at_ms=row.created_at_ms,
    )


def open_enrollment(
    db: Database, settings: PkiSettings, *, ca_dir: Path, clock: Callable[[], float]
) -> Enrollment:
    """The CA (given, or ``ca_dir``'s, made on first use) and the registry over ``db``; the
    CRL is written at once, so it exists (and is fresh) before any broker reads it."""
    now = dt.datetime.fromtimestamp(clock(), tz=dt.UTC)
    ca = CertificateAuthority.open(
        ca_dir, cert_file=settings.ca_cert, key_file=settings.ca_key, now=now
    )
    enrollment = Enrollment(
        db,
        ca,
        crl_path=ca_dir / "crl.pem",
        clock=clock,
        cert_lifetime_s=settings.cert_lifetime_s,
        token_ttl_s=settings.token_ttl_s,
    )
    if settings.broker_dir is not None:
        where = settings.broker_dir
        enrollment.on_change = lambda: brokerconfig.refresh(enrollment, where, now=enrollment.now())
    enrollment.write_crl()
    return enrollment
