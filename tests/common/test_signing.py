from __future__ import annotations

import os
import random
import stat
import subprocess
import sys
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


# Public keys read without cryptography's serialization package (the Ed25519 form) and with it
# (anything else): every block is read as cryptography's own loader reads it, or refused alike.


def _reference(pem: bytes) -> list[bytes] | str:
    """What cryptography's ``load_pem_public_key`` makes of each block, as ``load_public_keys``
    splits them: the raw keys, or the error ``load_public_keys`` must raise."""
    from cryptography.hazmat.primitives import serialization

    marker = b"-----END PUBLIC KEY-----"
    raws = []
    for block in [b + marker for b in pem.split(marker) if b.strip()]:
        try:
            key = serialization.load_pem_public_key(block.strip())
        except ValueError:
            return "not a PEM public key"
        if not isinstance(key, signing.Ed25519PublicKey):
            return "not an Ed25519 public key"
        raws.append(key.public_bytes_raw())
    return raws


def _loaded(pem: bytes) -> list[bytes] | str:
    try:
        return [k.public_bytes_raw() for k in signing.load_public_keys(pem)]
    except SignatureError as exc:
        return str(exc).removeprefix("PEM: ")


def _pem_of_raw(raw: bytes, *, newline: bytes = b"\n") -> bytes:
    import base64

    body = base64.b64encode(bytes.fromhex("302a300506032b6570032100") + raw)
    return b"-----BEGIN PUBLIC KEY-----" + newline + body + newline + b"-----END PUBLIC KEY-----"


def test_public_keys_are_read_as_cryptography_reads_them() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    rng = random.Random(10)
    pems = [signing.public_pem(signing.generate().public_key()).encode() for _ in range(50)]
    raws = [bytes(rng.getrandbits(8) for _ in range(32)) for _ in range(50)]
    raws += [bytes([1]) + bytes(31), bytes(32), b"\xff" * 32]  # small-order, zero, non-canonical
    pems += [_pem_of_raw(r) for r in raws] + [_pem_of_raw(r, newline=b"\r\n") for r in raws[:5]]
    one = pems[0].decode()
    body = one.splitlines()[1]
    other = [
        one.replace("\n", "\r\n"),  # CRLF throughout
        "# the controller's key\n" + one,  # text before the block
        one.replace(body, body[:30] + "\n" + body[30:]),  # the line wrapped
        one.replace(body, body[:-2] + chr(ord(body[-2]) ^ 1) + "="),  # bits past the last byte
        one.replace(body, body[:-1]),  # no padding
        one.replace(body, body + "AAAA"),  # longer
        one.replace(body, " " + body),
        one + one,  # a bundle of two
        one + "\n\n" + signing.public_pem(signing.generate().public_key()),
        "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n",
        "-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----\n",
    ]
    for foreign in (
        rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key(),
        ec.generate_private_key(ec.SECP256R1()).public_key(),
    ):
        from cryptography.hazmat.primitives import serialization

        other.append(
            foreign.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ).decode()
        )
    pems += [p.encode() for p in other]
    outcomes = set()
    for pem in pems:
        want = _reference(pem)
        assert _loaded(pem) == want, pem
        outcomes.add(want if isinstance(want, str) else "keys")
    assert outcomes == {"keys", "not a PEM public key", "not an Ed25519 public key"}


def test_trusting_and_verifying_leave_the_serialization_package_unloaded(tmp_path: Path) -> None:
    key = signing.generate()
    (tmp_path / "trusted.pem").write_text(signing.public_pem(key.public_key()))
    env = signing.sign(b"payload", signing.DESIRED_TYPE, key)
    (tmp_path / "sig").write_bytes(env.signature)
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from edgefleet.common import signing\n"
        f"d = Path({str(tmp_path)!r})\n"
        "trust = signing.TrustStore.from_pem_files([d / 'trusted.pem'])\n"
        "(kid,) = trust.key_ids\n"
        "env = signing.Envelope(b'payload', signing.DESIRED_TYPE, kid, (d / 'sig').read_bytes())\n"
        "assert trust.verify(env, expected_type=signing.DESIRED_TYPE) == b'payload'\n"
        "assert 'cryptography.hazmat.primitives.serialization' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
