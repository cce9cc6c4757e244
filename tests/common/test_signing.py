from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from edgefleet.common import signing
from edgefleet.common.errors import SignatureError


@pytest.fixture
def key() -> signing.Ed25519PrivateKey:
    return signing.generate()


def test_sign_then_verify_returns_payload(key: signing.Ed25519PrivateKey) -> None:
    env = signing.sign(b"hello", signing.MANIFEST_TYPE, key)
    trust = signing.TrustStore([key.public_key()])
    assert trust.verify(env, expected_type=signing.MANIFEST_TYPE) == b"hello"
    assert env.key_id == signing.key_id(key.public_key())


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (
            lambda e: signing.Envelope(b"hellO", e.payload_type, e.key_id, e.signature),
            "bad signature",
        ),
        (
            lambda e: signing.Envelope(e.payload, e.payload_type, e.key_id, bytes(64)),
            "bad signature",
        ),
        (
            lambda e: signing.Envelope(e.payload, e.payload_type, "ed25519:0000", e.signature),
            "unknown key",
        ),
        (
            lambda e: signing.Envelope(e.payload, signing.DESIRED_TYPE, e.key_id, e.signature),
            "payload type",
        ),
    ],
    ids=["payload", "signature", "key-id", "type-confusion"],
)
def test_tampered_envelopes_are_refused(
    key: signing.Ed25519PrivateKey, mutate, reason: str
) -> None:
    env = mutate(signing.sign(b"hello", signing.MANIFEST_TYPE, key))
    with pytest.raises(SignatureError, match=reason):
        signing.TrustStore([key.public_key()]).verify(env, expected_type=signing.MANIFEST_TYPE)


def test_untrusted_key_is_refused(key: signing.Ed25519PrivateKey) -> None:
    other = signing.generate()
    env = signing.sign(b"x", signing.MANIFEST_TYPE, other)
    with pytest.raises(SignatureError, match="unknown key"):
        signing.TrustStore([key.public_key()]).verify(env, expected_type=signing.MANIFEST_TYPE)


def test_pem_bundle_round_trip(tmp_path: Path, key: signing.Ed25519PrivateKey) -> None:
    second = signing.generate()
    bundle = tmp_path / "trusted.pem"
    bundle.write_text(
        signing.public_pem(key.public_key()) + signing.public_pem(second.public_key())
    )
    trust = signing.TrustStore.from_pem_files([bundle])
    assert set(trust.key_ids) == {
        signing.key_id(key.public_key()),
        signing.key_id(second.public_key()),
    }


def test_garbage_pem_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    with pytest.raises(SignatureError, match="not a PEM public key"):
        signing.TrustStore.from_pem_files([bad])


def test_private_key_file_is_owner_only(tmp_path: Path, key: signing.Ed25519PrivateKey) -> None:
    path = tmp_path / "keys" / "k.pem"
    signing.save_private_key(key, path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    loaded = signing.load_private_key(path)
    assert signing.key_id(loaded.public_key()) == signing.key_id(key.public_key())
    with pytest.raises(FileExistsError):
        signing.save_private_key(key, path)  # never overwritten silently
