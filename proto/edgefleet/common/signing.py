"""Ed25519 signatures over typed payloads, and the keys that make and check them.

The signed bytes are a pre-authentication encoding (as in DSSE) of the payload type and the
payload, so a signature made for a ``Manifest`` can never pass as one for a ``DesiredState``.
Key ids are derived from the public key, so an envelope cannot claim a key it was not made with.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgefleet.common.errors import SignatureError

MANIFEST_TYPE = "edgefleet.v1.Manifest"
DESIRED_TYPE = "edgefleet.v1.DesiredState"
BENCHMARK_TYPE = "edgefleet.v1.BenchmarkSpec"


@dataclass(frozen=True)
class Envelope:
    payload: bytes
    payload_type: str
    key_id: str
    signature: bytes


def pae(payload_type: str, payload: bytes) -> bytes:
    t = payload_type.encode()
    return b"EFSIG1 %d %s %d %s" % (len(t), t, len(payload), payload)


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


def sign(payload: bytes, payload_type: str, private_key: Ed25519PrivateKey) -> Envelope:
    return Envelope(
        payload=payload,
        payload_type=payload_type,
        key_id=key_id(private_key.public_key()),
        signature=private_key.sign(pae(payload_type, payload)),
    )


class TrustStore:
    """The public keys a verifier accepts, by key id."""

    def __init__(self, keys: Iterable[Ed25519PublicKey] = ()) -> None:
        self._keys: dict[str, Ed25519PublicKey] = {key_id(k): k for k in keys}

    @classmethod
    def from_pem_files(cls, paths: Iterable[Path]) -> TrustStore:
        keys = []
        for path in paths:
            keys.extend(load_public_keys(path.read_bytes(), source=str(path)))
        return cls(keys)

    @property
    def key_ids(self) -> Mapping[str, Ed25519PublicKey]:
        return dict(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def verify(self, envelope: Envelope, *, expected_type: str) -> bytes:
        """Return the payload when ``envelope`` carries a valid signature by a trusted key."""
        if envelope.payload_type != expected_type:
            raise SignatureError(
                f"payload type {envelope.payload_type!r} where {expected_type!r} was expected",
                key_id=envelope.key_id,
            )
        public_key = self._keys.get(envelope.key_id)
        if public_key is None:
            raise SignatureError(
                f"signed by unknown key {envelope.key_id or '(none)'}", key_id=envelope.key_id
            )
        try:
            public_key.verify(envelope.signature, pae(envelope.payload_type, envelope.payload))
        except InvalidSignature as exc:
            raise SignatureError(
                f"bad signature on {expected_type} (key {envelope.key_id})", key_id=envelope.key_id
            ) from exc
        return envelope.payload


def generate() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def public_pem(key: Ed25519PublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def load_public_keys(pem: bytes, *, source: str = "PEM") -> list[Ed25519PublicKey]:
    """Every public key in a PEM bundle (``BEGIN PUBLIC KEY`` blocks, one after another)."""
    marker = b"-----END PUBLIC KEY-----"
    blocks = [b + marker for b in pem.split(marker) if b.strip()]
    keys = []
    for block in blocks:
        try:
            key = serialization.load_pem_public_key(block.strip())
        except ValueError as exc:
            raise SignatureError(f"{source}: not a PEM public key") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise SignatureError(f"{source}: not an Ed25519 public key")
        keys.append(key)
    return keys


def save_private_key(key: Ed25519PrivateKey, path: Path) -> None:
    """Write a private key readable by its owner only; the file is created 0600, never widened."""
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def load_private_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path}: not an Ed25519 private key")
    return key
