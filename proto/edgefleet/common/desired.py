"""Sealing (controller) and opening (agent) of the signed desired state.

Opening checks, in order: the outer envelope's signature by a trusted key, the payload's
shape, the inner manifest's own signature, that the manifest digest matches the manifest bytes
and that the manifest names the release the desired state names, and that it has not expired
(``expires_at_ms``; its signing key must also be inside its trust-bundle window then).
Generation (anti-replay) is checked by the agent against its persisted state, since only it
knows what it applied. A slot rebuilt from disk opens its desired state ``at_any_time``: what
was proven once stays proven, only a revoked key takes it away.
"""

from __future__ import annotations

import time
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
    expires_at_ms: int = 0,
) -> bytes:
    """The signed desired state; ``expires_at_ms`` 0: it never expires."""
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
        expires_at_ms=expires_at_ms,
    )
    env = sign(msg.SerializeToString(deterministic=True), DESIRED_TYPE, key)
    return wire.envelope_to_pb(env).SerializeToString(deterministic=True)


def open_manifest(env: Envelope, trust: TrustStore) -> tuple[t.Manifest, str]:
    """Verify a signed manifest; return it with its digest."""
    payload = trust.verify(env, expected_type=MANIFEST_TYPE)
    return wire.decode_manifest(payload), digests.of_bytes(payload)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def open_desired(
    data: bytes,
    trust: TrustStore,
    *,
    device_id: str,
    now: int | None = None,
    at_any_time: bool = False,
) -> t.DesiredState:
    """Verify a signed desired state for ``device_id``.

    ``now`` (epoch ms; default the wall clock): it must not have expired then. ``at_any_time``:
    skip the expiry and key-window checks (a slot on disk, proven when it was installed).
    """
    at = None if at_any_time else (now_ms() if now is None else now)
    env = wire.decode_envelope(data)
    payload = trust.verify(env, expected_type=DESIRED_TYPE, at_ms=at)
    msg = wire.parse(mqtt_pb2.DesiredState, payload, what="desired state")
    if msg.device_id != device_id:
        raise SignatureError(f"desired state addressed to {msg.device_id!r}, not {device_id!r}")
    if at is not None and msg.expires_at_ms and at >= msg.expires_at_ms:
        raise SignatureError(
            f"desired state of generation {msg.generation} expired at {msg.expires_at_ms} "
            f"(now {at})",
            key_id=env.key_id,
        )
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
