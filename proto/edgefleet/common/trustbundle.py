"""The signed trust bundle and fleet roster (``trust.proto``): sealing (controller) and opening
(agent), with the rules that make key rotation and revocation safe. No I/O; time comes in.

Trust bundle (retained on ``ef/v1/trust``): the release-signing public keys, each with the
window in which it may sign fresh messages, the revoked key ids, the active key id and a
version that grows with every key change. TUF-style, a bundle carries one signature per key the
controller still trusts, and an agent takes it only when

* at least one signature is by a key the agent trusts now (the bundle it holds, or the keys it
  was given), inside that key's window: a bundle cannot introduce its own signer;
* its version is newer than the one held (no rollback; the same version is a redelivery);
* it is well formed: every key id is the one its key derives to, the active key is listed, no
  key is both listed and revoked.

Fleet roster (retained on ``ef/v1/fleet/{f}/roster``): a ``Signed`` envelope (payload type
``edgefleet.v1.FleetRoster``) by the active key, listing the devices of the fleet (by the
registry) and the Predict endpoint of each one's own status. An older roster than the one held
is refused; failover forwards only to a device the roster lists, at the endpoint it lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.common import signing, wire
from edgefleet.common.errors import MalformedMessageError, SignatureError
from edgefleet.common.signing import BUNDLE_TYPE, ROSTER_TYPE, TrustStore, Window
from edgefleet.v1 import trust_pb2


class StaleBundleError(SignatureError):
    """A bundle or roster not newer than the one held: a rollback (or a redelivery)."""

    def __init__(self, what: str, version: int, held: int) -> None:
        super().__init__(f"{what} {version} is not newer than the {what} held ({held})")
        self.version = version
        self.held = held


@dataclass(frozen=True)
class BundleKey:
    key_id: str
    public_key_pem: str
    not_before_ms: int = 0
    not_after_ms: int = 0

    @property
    def window(self) -> Window:
        return Window(self.not_before_ms, self.not_after_ms)


@dataclass(frozen=True)
class TrustBundle:
    version: int
    keys: tuple[BundleKey, ...]
    revoked: tuple[str, ...] = ()
    active_key_id: str = ""
    issued_at_ms: int = 0

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(k.key_id for k in self.keys)

    def pem(self) -> str:
        """Every trusted public key, one PEM block after another (``--trusted-key`` FILE)."""
        return "".join(k.public_key_pem for k in self.keys)


def encode_bundle(bundle: TrustBundle) -> bytes:
    msg = trust_pb2.TrustBundle(
        version=bundle.version,
        keys=[
            trust_pb2.TrustedKey(
                key_id=k.key_id,
                public_key_pem=k.public_key_pem,
                not_before_ms=k.not_before_ms,
                not_after_ms=k.not_after_ms,
            )
            for k in bundle.keys
        ],
        revoked_key_ids=list(bundle.revoked),
        active_key_id=bundle.active_key_id,
        issued_at_ms=bundle.issued_at_ms,
    )
    return msg.SerializeToString(deterministic=True)


def seal_bundle(bundle: TrustBundle, signers: Sequence[Ed25519PrivateKey]) -> bytes:
    """The bundle signed by each of ``signers`` (every key the controller still trusts)."""
    if not signers:
        raise SignatureError("a trust bundle needs at least one signing key")
    payload = encode_bundle(bundle)
    signed = signing.pae(BUNDLE_TYPE, payload)
    msg = trust_pb2.SignedTrustBundle(
        payload=payload,
        signatures=[
            trust_pb2.BundleSignature(
                key_id=signing.key_id(k.public_key()), signature=k.sign(signed)
            )
            for k in signers
        ],
    )
    return msg.SerializeToString(deterministic=True)


def decode_bundle(payload: bytes) -> TrustBundle:
    """Parse and check a bundle's payload (its signatures are ``open_bundle``'s business)."""
    msg = wire.parse(trust_pb2.TrustBundle, payload, what="trust bundle")
    if not msg.version or not msg.keys:
        raise MalformedMessageError("trust bundle without version or keys")
    keys = []
    for k in msg.keys:
        found = signing.load_public_keys(k.public_key_pem.encode(), source=f"key {k.key_id}")
        if len(found) != 1 or signing.key_id(found[0]) != k.key_id:
            raise MalformedMessageError(f"trust bundle key {k.key_id!r} is not its key's id")
        keys.append(BundleKey(k.key_id, k.public_key_pem, k.not_before_ms, k.not_after_ms))
    bundle = TrustBundle(
        version=msg.version,
        keys=tuple(keys),
        revoked=tuple(msg.revoked_key_ids),
        active_key_id=msg.active_key_id,
        issued_at_ms=msg.issued_at_ms,
    )
    if set(bundle.key_ids) & set(bundle.revoked):
        raise MalformedMessageError("trust bundle lists a key it revokes")
    if bundle.active_key_id not in bundle.key_ids:
        raise MalformedMessageError(f"trust bundle's active key {bundle.active_key_id} not listed")
    return bundle


def open_bundle(
    data: bytes, trust: TrustStore, *, now_ms: int | None, held: int | None = None
) -> TrustBundle:
    """The bundle in ``data`` when a key ``trust`` accepts now signed it and it is newer.

    ``StaleBundleError`` for a version not newer than ``held`` (default ``trust.version``);
    ``SignatureError`` when no signature is by a currently trusted key. ``now_ms`` None: no
    key-window check (a bundle verified when it arrived, read back from disk).
    """
    msg = wire.parse(trust_pb2.SignedTrustBundle, data, what="signed trust bundle")
    bundle = decode_bundle(msg.payload)
    held = trust.version if held is None else held
    if bundle.version <= held:
        raise StaleBundleError("trust bundle version", bundle.version, held)
    signed = signing.pae(BUNDLE_TYPE, msg.payload)
    problems = []
    for sig in msg.signatures:
        try:
            trust.check_signature(
                sig.key_id, sig.signature, signed, what="trust bundle", at_ms=now_ms
            )
        except SignatureError as exc:
            problems.append(str(exc))
            continue
        return bundle
    raise SignatureError(
        "trust bundle not signed by a trusted key: " + ("; ".join(problems) or "no signature")
    )


def adopt(trust: TrustStore, bundle: TrustBundle) -> None:
    """Make ``trust`` follow ``bundle`` (already opened)."""
    keys = {}
    for k in bundle.keys:
        (public,) = signing.load_public_keys(k.public_key_pem.encode(), source=k.key_id)
        keys[k.key_id] = (public, k.window)
    trust.adopt(keys, revoked=bundle.revoked, version=bundle.version)


# --- fleet roster ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RosterEntry:
    device_id: str
    predict_endpoint: str
    cert_sha256: tuple[str, ...] = ()


@dataclass(frozen=True)
class Roster:
    fleet: str
    issued_at_ms: int
    devices: tuple[RosterEntry, ...] = ()

    def endpoint_of(self, device_id: str) -> str | None:
        for d in self.devices:
            if d.device_id == device_id:
                return d.predict_endpoint
        return None


def encode_roster(roster: Roster) -> bytes:
    msg = trust_pb2.FleetRoster(
        fleet=roster.fleet,
        issued_at_ms=roster.issued_at_ms,
        devices=[
            trust_pb2.RosterEntry(
                device_id=d.device_id,
                predict_endpoint=d.predict_endpoint,
                cert_sha256=list(d.cert_sha256),
            )
            for d in roster.devices
        ],
    )
    return msg.SerializeToString(deterministic=True)


def seal_roster(roster: Roster, key: Ed25519PrivateKey) -> bytes:
    env = signing.sign(encode_roster(roster), ROSTER_TYPE, key)
    return wire.envelope_to_pb(env).SerializeToString(deterministic=True)


def open_roster(
    data: bytes, trust: TrustStore, *, fleet: str, now_ms: int, held_ms: int = 0
) -> Roster:
    """The roster in ``data``: signed by a key trusted now, for ``fleet``, newer than held."""
    payload = trust.verify(wire.decode_envelope(data), expected_type=ROSTER_TYPE, at_ms=now_ms)
    msg = wire.parse(trust_pb2.FleetRoster, payload, what="fleet roster")
    if msg.fleet != fleet:
        raise SignatureError(f"roster of fleet {msg.fleet!r}, not {fleet!r}")
    if msg.issued_at_ms <= held_ms:
        raise StaleBundleError("roster issued at", msg.issued_at_ms, held_ms)
    return Roster(
        fleet=msg.fleet,
        issued_at_ms=msg.issued_at_ms,
        devices=tuple(
            RosterEntry(d.device_id, d.predict_endpoint, tuple(d.cert_sha256)) for d in msg.devices
        ),
    )
