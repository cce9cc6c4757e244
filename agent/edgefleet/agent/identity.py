"""The device's own identity on disk: its key, its certificate and the fleet CA bundle.

``<data-dir>/identity/``: ``device.key`` (0600, made here, never sent anywhere), ``device.crt``
(0600) and ``ca.pem`` (0644). Enrolling or renewing writes ``*.next`` files first and then
renames key and certificate in that order, so a crash between the two renames leaves a
``device.crt.next`` that ``IdentityFiles.recover`` rolls forward on the next start; a crash
earlier leaves the old pair in place. Nothing else in the data dir is touched: enrolling
again never costs a device its installed models.

``renew_due`` is the pure renewal rule (default: once 2/3 of the lifetime has passed).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from edgefleet.common import identities, rpc
from edgefleet.common.artifacts import fsync_dir
from edgefleet.common.errors import InvalidInputError

log = logging.getLogger(__name__)

RENEW_AT = 2 / 3


def renew_due(
    cert_not_before: dt.datetime,
    not_after: dt.datetime,
    now: dt.datetime,
    *,
    fraction: float = RENEW_AT,
) -> bool:
    """True once ``fraction`` of the certificate's lifetime has passed (and after it expired)."""
    return now >= cert_not_before + (not_after - cert_not_before) * fraction


def check_interval_s(cert_not_before: dt.datetime, not_after: dt.datetime) -> float:
    """How often to look again: a twentieth of the lifetime, 1 s to 1 h."""
    lifetime = (not_after - cert_not_before).total_seconds()
    return min(3600.0, max(1.0, lifetime / 20))


@dataclass(frozen=True)
class IdentityFiles:
    directory: Path

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> IdentityFiles:
        return cls(data_dir / "identity")

    @property
    def key(self) -> Path:
        return self.directory / "device.key"

    @property
    def cert(self) -> Path:
        return self.directory / "device.crt"

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    def exists(self) -> bool:
        self.recover()
        return self.key.is_file() and self.cert.is_file()

    def identity(self) -> identities.CertIdentity:
        return identities.identity_of(identities.load_cert(self.cert.read_bytes()))

    def client_tls(self, *, server_name: str = "") -> rpc.ClientTls:
        """mTLS with this identity: the fleet CA as the only root, the key and certificate as
        the client's (read now: a renewal takes effect at the next channel)."""
        self.recover()
        return rpc.ClientTls(
            ca_pem=self.ca.read_bytes(),
            key_pem=self.key.read_bytes(),
            cert_pem=self.cert.read_bytes(),
            server_name=server_name,
        )

    def load_key(self) -> ec.EllipticCurvePrivateKey:
        from cryptography.hazmat.primitives import serialization  # enrolled devices only

        key = serialization.load_pem_private_key(self.key.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise InvalidInputError(f"{self.key}: not an EC key")
        return key

    def save(self, key: ec.EllipticCurvePrivateKey, cert_pem: bytes, ca_pem: bytes) -> None:
        """Store a new key and its certificate (and the CA bundle), crash-safely."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write(_next(self.ca), ca_pem, mode=0o644)
        _write(_next(self.key), identities.key_pem(key), mode=0o600)
        _write(_next(self.cert), cert_pem, mode=0o600)
        fsync_dir(self.directory)
        os.replace(_next(self.ca), self.ca)
        os.replace(_next(self.key), self.key)  # key first: see recover
        os.replace(_next(self.cert), self.cert)
        fsync_dir(self.directory)

    def recover(self) -> None:
        """Finish a save cut short between its renames (the key moved, the certificate not)."""
        cert_next = _next(self.cert)
        if not cert_next.exists():
            _next(self.key).unlink(missing_ok=True)
            return
        if _next(self.key).exists():  # nothing moved yet: the old pair stands
            _next(self.key).unlink()
            cert_next.unlink()
            return
        os.replace(cert_next, self.cert)
        fsync_dir(self.directory)
        log.info("identity: finished an interrupted certificate update")


def _next(path: Path) -> Path:
    return path.with_name(path.name + ".next")


def _write(path: Path, data: bytes, *, mode: int) -> None:
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    path.chmod(mode)  # whatever the umask took away


def mqtt_tls_files(
    *,
    tls: bool,
    ca: Path | None,
    cert: Path | None,
    key: Path | None,
    files: IdentityFiles,
) -> tuple[str | None, str | None, str | None]:
    """(CA bundle, client certificate, key) for the MQTT session: those configured, else, for
    an mqtts:// broker and an enrolled device, the identity's own."""
    enrolled = tls and files.exists()
    if enrolled and cert is None:
        cert, key = files.cert, files.key
    if enrolled and ca is None and files.ca.is_file():
        ca = files.ca
    return _str(ca), _str(cert), _str(key)


def _str(path: Path | None) -> str | None:
    return str(path) if path is not None else None
