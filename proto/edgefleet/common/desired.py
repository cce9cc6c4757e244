"""Sealing (controller) and opening (agent) of the signed desired state.

Opening checks, in order: the outer envelope's signature by a trusted key, the payload's
shape, the inner manifest's own signature, that the manifest digest matches the manifest bytes
and that the manifest names the release the desired state names. Generation (anti-replay) is
checked by the agent against its persisted state, since only it knows what it applied.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.common import digests, wire
from edgefleet.common import types as t
from edgefleet.common.errors import MalformedMessageError, SignatureError
from edgefleet.common.signing import DESIRED_TYPE, MANIFEST_TYPE, Envelope, TrustStore, sign
from edgefleet.v1 import mqtt_pb2


def seal(
    *,
    device_id: str,
    fleet: str,
    generation: int,
    signed_manifest: Envelope,
    rollout_id: str,
    issued_at_ms: int,
    artifact_sources: Sequence[str],
    key: Ed25519PrivateKey,
) -> bytes:
    manifest = wire.decode_manifest(signed_manifest.payload)
    msg = mqtt_pb2.DesiredState(
        device_id=device_id,
        fleet=fleet,
        generation=generation,
        release=str(manifest.ref),
        manifest_digest=digests.of_bytes(signed_manifest.payload),
        manifest=wire.envelope_to_pb(signed_manifest),
        rollout_id=rollout_id,
        issued_at_ms=issued_at_ms,
        artifact_sources=list(artifact_sources),
    )
    env = sign(msg.SerializeToString(deterministic=True), DESIRED_TYPE, key)
    return wire.envelope_to_pb(env).SerializeToString(deterministic=True)


def open_manifest(env: Envelope, trust: TrustStore) -> tuple[t.Manifest, str]:
    """Verify a signed manifest; return it with its digest."""
    payload = trust.verify(env, expected_type=MANIFEST_TYPE)
    return wire.decode_manifest(payload), digests.of_bytes(payload)


def open_desired(data: bytes, trust: TrustStore, *, device_id: str) -> t.DesiredState:
    env = wire.decode_envelope(data)
    payload = trust.verify(env, expected_type=DESIRED_TYPE)
    msg = wire.parse(mqtt_pb2.DesiredState, payload, what="desired state")
    if msg.device_id != device_id:
        raise SignatureError(f"desired state addressed to {msg.device_id!r}, not {device_id!r}")
    if not msg.generation or not msg.release or not msg.HasField("manifest"):
        raise MalformedMessageError("desired state without generation, release or manifest")
    manifest, manifest_digest = open_manifest(wire.envelope_from_pb(msg.manifest), trust)
    if manifest_digest != msg.manifest_digest:
        raise SignatureError(
            f"manifest digest {manifest_digest} does not match the desired state's "
            f"{msg.manifest_digest}"
        )
    release = t.ReleaseRef.parse(msg.release)
    if release != manifest.ref:
        raise SignatureError(f"desired release {release} but the manifest is {manifest.ref}")
    digests.validate(manifest.model_digest)
    return t.DesiredState(
        device_id=msg.device_id,
        fleet=msg.fleet,
        generation=msg.generation,
        release=release,
        manifest_digest=manifest_digest,
        manifest=manifest,
        rollout_id=msg.rollout_id,
        issued_at_ms=msg.issued_at_ms,
        artifact_sources=tuple(msg.artifact_sources),
    )
