"""Device certificates as both sides read them: who a certificate names and how renewal is proved.

A device certificate (issued by the controller's CA, ``controller.pki``) carries the device id
as its subject CN (which Mosquitto's ``use_identity_as_username`` makes the MQTT username) and
both ids as SAN URIs: ``urn:edgefleet:device:<d>`` and ``urn:edgefleet:fleet:<f>``; the fleet is
also the subject OU. A renewal sent without mTLS is proved by the current key signing
``RENEW_CONTEXT + csr_der``, so the signature cannot be replayed as anything else.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgefleet.common.errors import InvalidInputError

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

# cryptography's X.509 (and EC) modules are imported by the functions that use them: an agent
# that is not enrolled never reads a certificate, and they would cost it ~0.9 MB of RSS.

DEVICE_URI = "urn:edgefleet:device:"
FLEET_URI = "urn:edgefleet:fleet:"
RENEW_CONTEXT = b"edgefleet-renew-v1\x00"
CONTROLLER_IDENTITY = "edgefleet-controller"
"""CN of the controller's own client certificate (its MQTT username); no device may take it."""


@dataclass(frozen=True)
class CertIdentity:
    """What a certificate says about its holder."""

    device_id: str
    fleet: str
    serial: int
    not_before: dt.datetime
    not_after: dt.datetime


def load_cert(pem: bytes) -> x509.Certificate:
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise InvalidInputError(f"not a PEM certificate: {exc}") from None


def identity_of(cert: x509.Certificate) -> CertIdentity:
    """The device id (CN) and fleet (SAN URI, else OU) a certificate names."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1:
        raise InvalidInputError("certificate has no single subject CN")
    device_id = str(cns[0].value)
    fleet = ""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
            if uri.startswith(FLEET_URI):
                fleet = uri.removeprefix(FLEET_URI)
    except x509.ExtensionNotFound:
        pass
    if not fleet:
        ous = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
        fleet = str(ous[0].value) if ous else ""
    return CertIdentity(
        device_id=device_id,
        fleet=fleet,
        serial=cert.serial_number,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
    )


def make_key() -> ec.EllipticCurvePrivateKey:
    """A device (or service) key: EC P-256."""
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_csr(key: ec.EllipticCurvePrivateKey, *, common_name: str = "") -> bytes:
    """A CSR (DER) for ``key``; the CA decides the subject, so the name is only a hint."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else [])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.DER)


def renewal_proof(key: ec.EllipticCurvePrivateKey, csr_der: bytes) -> bytes:
    """The current key's signature over a renewal's CSR."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    return key.sign(RENEW_CONTEXT + csr_der, ec.ECDSA(hashes.SHA256()))


def check_renewal_proof(cert: x509.Certificate, csr_der: bytes, proof: bytes) -> bool:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    public = cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        return False
    try:
        public.verify(proof, RENEW_CONTEXT + csr_der, ec.ECDSA(hashes.SHA256()))
    except Exception:  # cryptography's InvalidSignature, or a malformed signature
        return False
    return True
