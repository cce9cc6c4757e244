from __future__ import annotations

import pytest

from edgefleet.common import desired, digests, signing, wire
from edgefleet.common import types as t
from edgefleet.common.errors import MalformedMessageError, SignatureError
from edgefleet.v1 import common_pb2, mqtt_pb2

KEY = signing.generate()
TRUST = signing.TrustStore([KEY.public_key()])
MANIFEST = t.Manifest(
    name="digits",
    version="1.0.0",
    model_digest=digests.of_bytes(b"model"),
    model_size=5,
    inputs=(t.TensorSpec("pixels", "float32", (-1, 64)),),
    outputs=(t.TensorSpec("label", "int64", (-1,)),),
)


def signed_manifest(
    m: t.Manifest = MANIFEST, key: signing.Ed25519PrivateKey = KEY
) -> signing.Envelope:
    return signing.sign(wire.encode_manifest(m), signing.MANIFEST_TYPE, key)


def seal(**overrides: object) -> bytes:
    args: dict[str, object] = {
        "device_id": "dev-1",
        "fleet": "factory-a",
        "generation": 7,
        "signed_manifest": signed_manifest(),
        "rollout_id": "r1",
        "issued_at_ms": 1,
        "artifact_sources": ["127.0.0.1:50051"],
        "key": KEY,
    }
    args.update(overrides)
    return desired.seal(**args)  # type: ignore[arg-type]


def test_round_trip() -> None:
    state = desired.open_desired(seal(), TRUST, device_id="dev-1")
    assert state.generation == 7
    assert state.release == t.ReleaseRef("digits", "1.0.0")
    assert state.manifest == MANIFEST
    assert state.artifact_sources == ("127.0.0.1:50051",)


def test_addressed_to_another_device() -> None:
    with pytest.raises(SignatureError, match="addressed to"):
        desired.open_desired(seal(), TRUST, device_id="dev-2")


def test_outer_signature_by_unknown_key() -> None:
    with pytest.raises(SignatureError, match="unknown key"):
        desired.open_desired(seal(key=signing.generate()), TRUST, device_id="dev-1")


def test_manifest_signed_by_unknown_key() -> None:
    data = seal(signed_manifest=signed_manifest(key=signing.generate()))
    with pytest.raises(SignatureError, match="unknown key"):
        desired.open_desired(data, TRUST, device_id="dev-1")


def test_manifest_swapped_after_signing() -> None:
    """A validly signed outer envelope whose manifest digest does not match the manifest."""
    env = wire.decode_envelope(seal())
    msg = mqtt_pb2.DesiredState.FromString(env.payload)
    msg.manifest_digest = digests.of_bytes(b"another manifest")
    resigned = signing.sign(msg.SerializeToString(), signing.DESIRED_TYPE, KEY)
    data = wire.envelope_to_pb(resigned).SerializeToString()
    with pytest.raises(SignatureError, match="does not match"):
        desired.open_desired(data, TRUST, device_id="dev-1")


@pytest.mark.parametrize("payload", [b"", b"\xff\xff\xff", b"not protobuf at all"])
def test_malformed_payload(payload: bytes) -> None:
    with pytest.raises(MalformedMessageError):
        desired.open_desired(payload, TRUST, device_id="dev-1")


def test_signed_but_empty_desired_state_is_malformed() -> None:
    env = signing.sign(
        mqtt_pb2.DesiredState(device_id="dev-1").SerializeToString(), signing.DESIRED_TYPE, KEY
    )
    with pytest.raises(MalformedMessageError, match="without generation"):
        desired.open_desired(wire.envelope_to_pb(env).SerializeToString(), TRUST, device_id="dev-1")


def test_manifest_type_cannot_pass_as_desired_state() -> None:
    env = signed_manifest()
    data = common_pb2.Signed(
        payload=env.payload,
        payload_type=env.payload_type,
        key_id=env.key_id,
        signature=env.signature,
    ).SerializeToString()
    with pytest.raises(SignatureError, match="payload type"):
        desired.open_desired(data, TRUST, device_id="dev-1")
