"""The fleet CA: device certificates from CSRs, the broker's server certificate, the controller's
own client certificate, and the CRL.

The CA lives in ``<data-dir>/ca/`` (``ca.pem``, ``ca.key`` mode 0600), made on first use, or
is the operator's own (``--ca-cert/--ca-key``: bring your own CA; it is used in place, never
copied). The CRL (``<data-dir>/ca/crl.pem``) is rewritten whenever a certificate is revoked; its
``next_update`` is far enough out (``crl_days``) that a broker reading it never sees it lapse.
Everything here is pure certificate work given a clock value; which serials are revoked comes
from the database (``enrollment``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgefleet.common import identities
from edgefleet.common.artifacts import atomic_write
from edgefleet.common.errors import InvalidInputError
from edgefleet.controller.errors import IdentityRefusedError

log = logging.getLogger(__name__)

CA_YEARS = 10
DEFAULT_DEVICE_DAYS = 30
DEFAULT_CRL_DAYS = 180
_BACKDATE = dt.timedelta(minutes=5)  # clocks of devices run a little behind (at most this)


@dataclass(frozen=True)
class Issued:
    serial: int
    pem: bytes
    not_before: dt.datetime
    not_after: dt.datetime


@dataclass(frozen=True)
class KeyPair:
    """A key made here (server or controller identity) and its certificate, both PEM."""

    key_pem: bytes
    cert_pem: bytes


class CertificateAuthority:
    def __init__(
        self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, *, bundle_pem: bytes
    ) -> None:
        self.cert = cert
        self._key = key
        self.bundle_pem = bundle_pem
        """The CA certificate(s) devices and the broker trust (chain included when given)."""

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        now: dt.datetime,
    ) -> CertificateAuthority:
        """The given CA (both files), or the one in ``directory``, made there on first use."""
        if (cert_file is None) != (key_file is None):
            raise InvalidInputError("--ca-cert and --ca-key go together")
        if cert_file is None or key_file is None:
            cert_file, key_file = directory / "ca.pem", directory / "ca.key"
            if not cert_file.exists():
                _create(cert_file, key_file, now=now)
        bundle = cert_file.read_bytes()
        cert = identities.load_cert(bundle)
        if key_file.stat().st_mode & 0o077:
            log.warning("CA key %s is readable by others; chmod 600 it", key_file)
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise InvalidInputError(f"{key_file}: the CA key must be an EC key")
        if key.public_key().public_numbers() != _ec_public(cert).public_numbers():
            raise InvalidInputError(f"{key_file} is not the key of {cert_file}")
        return cls(cert, key, bundle_pem=bundle)

    # issuing

    def issue_device(
        self,
        csr_der: bytes,
        *,
        device_id: str,
        fleet: str,
        lifetime: dt.timedelta,
        now: dt.datetime,
    ) -> Issued:
        """A device certificate for the CSR's key; subject and fleet come from the registry."""
        try:
            csr = x509.load_der_x509_csr(csr_der)
        except ValueError as exc:
            raise InvalidInputError(f"not a DER certificate request: {exc}") from None
        if not csr.is_signature_valid:
            raise InvalidInputError("the certificate request is not signed by its own key")
        public = csr.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name != "secp256r1":
            raise InvalidInputError("device keys must be EC P-256")
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, fleet),
                x509.NameAttribute(NameOID.COMMON_NAME, device_id),
            ]
        )
        san = x509.SubjectAlternativeName(
            [
                x509.UniformResourceIdentifier(identities.DEVICE_URI + device_id),
                x509.UniformResourceIdentifier(identities.FLEET_URI + fleet),
            ]
        )
        eku = [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
        return self._sign(public, subject, san, eku, lifetime=lifetime, now=now)

    def issue_server(
        self, hosts: Sequence[str], *, lifetime: dt.timedelta, now: dt.datetime
    ) -> KeyPair:
        """A server certificate (the broker's) for DNS names and IP addresses in ``hosts``."""
        if not hosts:
            raise InvalidInputError("a server certificate needs at least one host name")
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        key = identities.make_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
        issued = self._sign(
            key.public_key(),
            subject,
            x509.SubjectAlternativeName(names),
            [ExtendedKeyUsageOID.SERVER_AUTH],
            lifetime=lifetime,
            now=now,
        )
        return KeyPair(identities.key_pem(key), issued.pem)

    def issue_client(self, name: str, *, lifetime: dt.timedelta, now: dt.datetime) -> KeyPair:
        """A client certificate with CN ``name`` (the controller's MQTT identity)."""
        key = identities.make_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        issued = self._sign(
            key.public_key(),
            subject,
            None,
            [ExtendedKeyUsageOID.CLIENT_AUTH],
            lifetime=lifetime,
            now=now,
        )
        return KeyPair(identities.key_pem(key), issued.pem)

    def _sign(
        self,
        public: ec.EllipticCurvePublicKey,
        subject: x509.Name,
        san: x509.SubjectAlternativeName | None,
        eku: list[x509.ObjectIdentifier],
        *,
        lifetime: dt.timedelta,
        now: dt.datetime,
    ) -> Issued:
        if lifetime <= dt.timedelta(0):
            raise InvalidInputError("a certificate lifetime must be positive")
        not_before = now - min(_BACKDATE, lifetime / 10)
        not_after = min(now + lifetime, self.cert.not_valid_after_utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_leaf_usage(), critical=True)
            .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        if san is not None:
            builder = builder.add_extension(san, critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return Issued(
            serial=cert.serial_number,
            pem=cert.public_bytes(serialization.Encoding.PEM),
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
        )

    # checking and revoking

    def check(self, cert: x509.Certificate, *, now: dt.datetime) -> identities.CertIdentity:
        """The identity of a certificate this CA issued and that is valid at ``now``."""
        try:
            cert.verify_directly_issued_by(self.cert)
        except Exception as exc:  # InvalidSignature, or a key type that does not match
            raise IdentityRefusedError(f"certificate not issued by this CA: {exc}") from None
        ident = identities.identity_of(cert)
        if not ident.not_before <= now <= ident.not_after:
            raise IdentityRefusedError(
                f"certificate of {ident.device_id} is not valid now (valid "
                f"{ident.not_before:%Y-%m-%d %H:%M:%S} to {ident.not_after:%Y-%m-%d %H:%M:%S} "
                "UTC): re-enroll the device"
            )
        return ident

    def crl(
        self,
        revoked: Iterable[tuple[int, dt.datetime]],
        *,
        now: dt.datetime,
        days: int = DEFAULT_CRL_DAYS,
    ) -> bytes:
        """A CRL (PEM) listing ``(serial, revoked_at)``."""
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - _BACKDATE)
            .next_update(now + dt.timedelta(days=days))
        )
        for serial, at in revoked:
            entry = (
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(at).build()
            )
            builder = builder.add_revoked_certificate(entry)
        crl = builder.sign(self._key, hashes.SHA256())
        return crl.public_bytes(serialization.Encoding.PEM)

    def write_crl(
        self, path: Path, revoked: Iterable[tuple[int, dt.datetime]], *, now: dt.datetime
    ) -> None:
        atomic_write(path, self.crl(revoked, now=now))
        path.chmod(0o644)


def _create(cert_file: Path, key_file: Path, *, now: dt.datetime) -> None:
    cert_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = identities.make_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "EdgeFleet"),
            x509.NameAttribute(NameOID.COMMON_NAME, "EdgeFleet fleet CA"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=365 * CA_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    # The key first, 0600 from its first byte; a CA certificate without its key is no CA.
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(identities.key_pem(key))
    atomic_write(cert_file, cert.public_bytes(serialization.Encoding.PEM))
    log.info("made a new fleet CA in %s", cert_file.parent)


def _leaf_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=True,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _ec_public(cert: x509.Certificate) -> ec.EllipticCurvePublicKey:
    public = cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise InvalidInputError("the CA certificate must hold an EC key")
    return public
