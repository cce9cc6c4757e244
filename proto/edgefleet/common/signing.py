"""Ed25519 signatures over typed payloads, and the keys that make and check them.

The signed bytes are a pre-authentication encoding (as in DSSE) of the payload type and the
payload, so a signature made for a ``Manifest`` can never pass as one for a ``DesiredState``.
Key ids are derived from the public key, so an envelope cannot claim a key it was not made with.

A ``TrustStore`` starts from the keys the device was given (``--trusted-key``) and follows the
signed trust bundle (``trustbundle``): its keys are added, with the window in which each may sign
fresh messages, and its revoked key ids taken away, the given ones included.

Public keys are read without cryptography's ``serialization`` package where they are in the
one form an Ed25519 key has (a ``BEGIN PUBLIC KEY`` block of the 44-byte SubjectPublicKeyInfo):
the agent reads every trusted key and bundle key so, and that package (PEM, DER, SSH, PKCS#12
codecs) would cost it about 1.1 MB of RSS. Anything else goes to cryptography's own loader,
which says what it is; tests/common/test_signing.py checks both read every key alike.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgefleet.common.errors import SignatureError

MANIFEST_TYPE = "edgefleet.v1.Manifest"
DESIRED_TYPE = "edgefleet.v1.DesiredState"
BENCHMARK_TYPE = "edgefleet.v1.BenchmarkSpec"
BUNDLE_TYPE = "edgefleet.v1.TrustBundle"
ROSTER_TYPE = "edgefleet.v1.FleetRoster"


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
    return "ed25519:" + hashlib.sha256(public_key.public_bytes_raw()).hexdigest()[:16]


def sign(payload: bytes, payload_type: str, private_key: Ed25519PrivateKey) -> Envelope:
    return Envelope(
        payload=payload,
        payload_type=payload_type,
        key_id=key_id(private_key.public_key()),
        signature=private_key.sign(pae(payload_type, payload)),
    )


@dataclass(frozen=True)
class Window:
    """When a key may sign fresh messages (epoch ms; 0 = open on that side)."""

    not_before_ms: int = 0
    not_after_ms: int = 0

    def contains(self, at_ms: int) -> bool:
        return (not self.not_before_ms or at_ms >= self.not_before_ms) and (
            not self.not_after_ms or at_ms < self.not_after_ms
        )


class TrustStore:
    """The public keys a verifier accepts, by key id; thread-safe, updated by ``adopt``."""

    def __init__(self, keys: Iterable[Ed25519PublicKey] = ()) -> None:
        self._given: dict[str, Ed25519PublicKey] = {key_id(k): k for k in keys}
        self._lock = threading.Lock()
        self._keys = dict(self._given)
        self._windows: dict[str, Window] = {}
        self._revoked: frozenset[str] = frozenset()
        self.version = 0
        """The version of the trust bundle adopted (0: only the given keys)."""

    @classmethod
    def from_pem_files(cls, paths: Iterable[Path]) -> TrustStore:
        keys = []
        for path in paths:
            keys.extend(load_public_keys(path.read_bytes(), source=str(path)))
        return cls(keys)

    @property
    def key_ids(self) -> Mapping[str, Ed25519PublicKey]:
        with self._lock:
            return dict(self._keys)

    @property
    def revoked(self) -> frozenset[str]:
        with self._lock:
            return self._revoked

    def __len__(self) -> int:
        with self._lock:
            return len(self._keys)

    def adopt(
        self,
        keys: Mapping[str, tuple[Ed25519PublicKey, Window]],
        *,
        revoked: Iterable[str],
        version: int,
    ) -> None:
        """Trust the given keys plus ``keys`` (each with its window), less ``revoked``."""
        gone = frozenset(revoked)
        merged = {**self._given, **{kid: k for kid, (k, _) in keys.items()}}
        with self._lock:
            self._keys = {kid: k for kid, k in merged.items() if kid not in gone}
            self._windows = {kid: w for kid, (_, w) in keys.items() if kid not in gone}
            self._revoked = gone
            self.version = version

    def accepts(self, kid: str, *, at_ms: int | None = None) -> bool:
        """Whether ``kid`` is trusted (and, with ``at_ms``, inside its window then)."""
        with self._lock:
            if kid not in self._keys:
                return False
            window = self._windows.get(kid)
        return at_ms is None or window is None or window.contains(at_ms)

    def verify(self, envelope: Envelope, *, expected_type: str, at_ms: int | None = None) -> bytes:
        """Return the payload when ``envelope`` carries a valid signature by a trusted key.

        ``at_ms``: a fresh message, signed now: its key must also be inside its window then.
        Without it (a slot's manifest installed long ago) only revocation takes a key away.
        """
        if envelope.payload_type != expected_type:
            raise SignatureError(
                f"payload type {envelope.payload_type!r} where {expected_type!r} was expected",
                key_id=envelope.key_id,
            )
        self.check_signature(
            envelope.key_id,
            envelope.signature,
            pae(envelope.payload_type, envelope.payload),
            what=expected_type,
            at_ms=at_ms,
        )
        return envelope.payload

    def check_signature(
        self, kid: str, signature: bytes, signed: bytes, *, what: str, at_ms: int | None = None
    ) -> None:
        """``SignatureError`` unless ``signature`` over ``signed`` is by trusted key ``kid``."""
        with self._lock:
            public_key = self._keys.get(kid)
            window = self._windows.get(kid)
            revoked = kid in self._revoked
        if public_key is None:
            state = "revoked" if revoked else "unknown"
            raise SignatureError(f"signed by {state} key {kid or '(none)'}", key_id=kid)
        if at_ms is not None and window is not None and not window.contains(at_ms):
            raise SignatureError(
                f"{what} signed by key {kid} outside its trusted window", key_id=kid
            )
        try:
            public_key.verify(signature, signed)
        except InvalidSignature as exc:
            raise SignatureError(f"bad signature on {what} (key {kid})", key_id=kid) from exc


def generate() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def public_pem(key: Ed25519PublicKey) -> str:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def load_public_keys(pem: bytes, *, source: str = "PEM") -> list[Ed25519PublicKey]:
    """Every public key in a PEM bundle (``BEGIN PUBLIC KEY`` blocks, one after another)."""
    marker = b"-----END PUBLIC KEY-----"
    blocks = [b + marker for b in pem.split(marker) if b.strip()]
    keys = []
    for block in blocks:
        ed25519 = _ed25519_pem(block.strip())
        if ed25519 is not None:
            keys.append(ed25519)
            continue
        from cryptography.hazmat.primitives import serialization  # any other form: it says what

        try:
            key = serialization.load_pem_public_key(block.strip())
        except ValueError as exc:
            raise SignatureError(f"{source}: not a PEM public key") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise SignatureError(f"{source}: not an Ed25519 public key")
        keys.append(key)
    return keys


# SubjectPublicKeyInfo of an Ed25519 key (RFC 8410): SEQUENCE { SEQUENCE { OID 1.3.101.112 },
# BIT STRING (no unused bits) of the 32-byte key }; as PEM, one line of 60 base64 characters
_ED25519_SPKI = bytes.fromhex("302a300506032b6570032100")
_PEM_ED25519 = re.compile(
    rb"-----BEGIN PUBLIC KEY-----(\r?\n)"
    rb"(MCowBQYDK2VwAyEA[A-Za-z0-9+/]{43}=)\1"
    rb"-----END PUBLIC KEY-----"
)


def _ed25519_pem(block: bytes) -> Ed25519PublicKey | None:
    """The key of a PEM block that is exactly an Ed25519 key's (as ``public_pem`` and
    ``openssl pkey -pubout`` write it); None for any other block, which
    ``serialization.load_pem_public_key`` then reads or refuses."""
    match = _PEM_ED25519.fullmatch(block)
    if match is None:
        return None
    der = base64.b64decode(match.group(2), validate=True)
    if len(der) != len(_ED25519_SPKI) + 32 or base64.b64encode(der) != match.group(2):
        return None  # not canonical base64 (bits after the key's last byte)
    return Ed25519PublicKey.from_public_bytes(der[len(_ED25519_SPKI) :])


def save_private_key(key: Ed25519PrivateKey, path: Path) -> None:
    """Write a private key readable by its owner only; the file is created 0600, never widened."""
    from cryptography.hazmat.primitives import serialization

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
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path}: not an Ed25519 private key")
    return key
