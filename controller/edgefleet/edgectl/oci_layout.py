"""A release as an OCI artifact: an image layout directory, and its push to a registry
(``edgectl release export`` / ``push``; the controller serves the blobs, it never writes one).

The image manifest (``artifactType`` ``application/vnd.edgefleet.release.v1``, the empty
config) lists three layers: the signed manifest (the exact ``Signed`` protobuf bytes, so any
holder can check the signature), the model, and the golden set when the release has one.
The JSON is written with sorted keys and no whitespace and ``created`` is the release's own
time, so one release always yields the same manifest digest, wherever it is exported.

``read_layout`` is the reverse: it checks every blob against its digest and size, the
signature against a ``TrustStore`` when given one, and that the layers are the blobs the
signed manifest names. ``push_layout`` sends a layout to a registry: blobs first (skipping
those already there), the manifest last, so a tag never names a manifest with missing blobs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgefleet.common import artifacts, digests, oci, rpc, signing, wire
from edgefleet.common import types as t
from edgefleet.common.artifacts import atomic_write
from edgefleet.common.errors import IntegrityError, MalformedMessageError, NotFoundError
from edgefleet.v1 import common_pb2, controller_pb2

LAYOUT_FILE = "oci-layout"
LAYOUT_VERSION = {"imageLayoutVersion": "1.0.0"}
TITLE = "org.opencontainers.image.title"
VERSION = "org.opencontainers.image.version"
CREATED = "org.opencontainers.image.created"
REF_NAME = "org.opencontainers.image.ref.name"
RELEASE = "dev.edgefleet.release"
SIGNED_TITLE = "manifest.signed.pb"


@dataclass(frozen=True)
class Layer:
    """One blob of a release: its media type, digest, size and file title."""

    media_type: str
    digest: str
    size: int
    title: str

    def descriptor(self) -> dict[str, Any]:
        return {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
            "annotations": {TITLE: self.title},
        }


@dataclass(frozen=True)
class LayoutRelease:
    """What ``read_layout`` found: the manifest's digest, tag and the release it carries."""

    root: Path
    manifest_digest: str
    tag: str
    signed: signing.Envelope
    manifest: t.Manifest
    layers: tuple[Layer, ...]

    def blob(self, digest: str) -> Path:
        return blob_path(self.root, digest)


def dumps(obj: object) -> bytes:
    """Canonical JSON: sorted keys, no whitespace, so equal content has equal digests."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def blob_path(root: Path, digest: str) -> Path:
    return root / "blobs" / "sha256" / digests.hex_part(digest)


def model_media_type(encoding: str) -> str:
    return oci.MODEL_EFPK_TYPE if encoding == "efpk" else oci.MODEL_ONNX_TYPE


def created_at(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def release_layers(signed_bytes: bytes, m: t.Manifest) -> list[Layer]:
    """The layers of release ``m`` whose signed envelope serializes to ``signed_bytes``."""
    model_ext = "efpk" if m.model_encoding == "efpk" else "onnx"
    layers = [
        Layer(
            oci.SIGNED_MANIFEST_TYPE,
            digests.of_bytes(signed_bytes),
            len(signed_bytes),
            SIGNED_TITLE,
        ),
        Layer(
            model_media_type(m.model_encoding),
            m.model_digest,
            m.model_size,
            f"{m.name}-{m.version}.{model_ext}",
        ),
    ]
    if m.golden_digest:
        layers.append(
            Layer(oci.GOLDEN_TYPE, m.golden_digest, m.golden_size, f"{m.name}-{m.version}.npz")
        )
    return layers


def image_manifest(layers: list[Layer], m: t.Manifest, *, created_ms: int) -> bytes:
    """The OCI image manifest of a release, as canonical JSON bytes."""
    return dumps(
        {
            "schemaVersion": 2,
            "mediaType": oci.MANIFEST_TYPE,
            "artifactType": oci.ARTIFACT_TYPE,
            "config": {
                "mediaType": oci.EMPTY_TYPE,
                "digest": oci.EMPTY_DIGEST,
                "size": len(oci.EMPTY_BYTES),
            },
            "layers": [layer.descriptor() for layer in layers],
            "annotations": {
                TITLE: m.name,
                VERSION: m.version,
                CREATED: created_at(created_ms),
                RELEASE: f"{m.name}:{m.version}",
            },
        }
    )


def write_layout(
    root: Path,
    signed: common_pb2.Signed,
    *,
    created_ms: int,
    tag: str,
    fetch_blob: Callable[[str, Path], None],
) -> str:
    """Write a release as an OCI image layout under ``root``; returns the manifest's digest.

    ``fetch_blob(digest, partial)`` fills ``partial`` with the bytes of the model or golden
    blob (resuming from its size); each is verified before it takes its place under ``blobs``.
    Blobs already in place and intact are kept, so an export cut short can simply be rerun.
    """
    signed_bytes = signed.SerializeToString(deterministic=True)
    m = wire.decode_manifest(signed.payload)
    layers = release_layers(signed_bytes, m)
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    _put(root, oci.EMPTY_BYTES)
    _put(root, signed_bytes)
    for layer in layers[1:]:
        target = blob_path(root, layer.digest)
        if target.is_file() and digests.of_file(target) == layer.digest:
            continue
        partial = blobs / f".{digests.hex_part(layer.digest)}.partial"
        fetch_blob(layer.digest, partial)
        try:
            digests.verify_file(partial, layer.digest)
        except IntegrityError:
            partial.unlink(missing_ok=True)
            raise
        os.replace(partial, target)
    manifest = image_manifest(layers, m, created_ms=created_ms)
    manifest_digest = _put(root, manifest)
    index = {
        "schemaVersion": 2,
        "mediaType": oci.INDEX_TYPE,
        "manifests": [
            {
                "mediaType": oci.MANIFEST_TYPE,
                "artifactType": oci.ARTIFACT_TYPE,
                "digest": manifest_digest,
                "size": len(manifest),
                "annotations": {REF_NAME: tag},
            }
        ],
    }
    atomic_write(root / LAYOUT_FILE, dumps(LAYOUT_VERSION))
    atomic_write(root / "index.json", dumps(index))
    return manifest_digest


def _put(root: Path, data: bytes) -> str:
    digest = digests.of_bytes(data)
    atomic_write(blob_path(root, digest), data)
    return digest


def _read_json(path: Path, *, what: str) -> dict[str, Any]:
    try:
        value = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise NotFoundError(what, str(path)) from None
    except ValueError as exc:
        raise MalformedMessageError(f"{path}: not JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise MalformedMessageError(f"{path}: not a JSON object")
    return value


def _verified_blob(root: Path, descriptor: dict[str, Any]) -> Path:
    """The blob a descriptor names, after checking its digest and size."""
    try:
        digest = digests.validate(str(descriptor["digest"]))
        size = int(descriptor["size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise MalformedMessageError(f"descriptor without digest or size: {descriptor}") from exc
    path = blob_path(root, digest)
    if not path.is_file():
        raise NotFoundError("blob", f"{digest} in {root}")
    digests.verify_file(path, digest)
    if path.stat().st_size != size:
        raise IntegrityError(digest, f"a blob of {path.stat().st_size} bytes, not {size}")
    return path


def read_layout(
    root: Path, *, trust: signing.TrustStore | None = None, tag: str = ""
) -> LayoutRelease:
    """Read back a release layout, verifying every blob (and the signature, given ``trust``).

    ``tag`` picks a manifest of ``index.json`` by its ref name; empty = the only one.
    """
    layout = _read_json(root / LAYOUT_FILE, what="OCI layout")
    if layout.get("imageLayoutVersion") != LAYOUT_VERSION["imageLayoutVersion"]:
        raise MalformedMessageError(f"{root}: unsupported OCI layout version {layout}")
    index = _read_json(root / "index.json", what="OCI index")
    entries = [
        e
        for e in index.get("manifests") or []
        if not tag or (e.get("annotations") or {}).get(REF_NAME) == tag
    ]
    if len(entries) != 1:
        raise NotFoundError("release manifest", f"{tag or '(one)'} in {root}/index.json")
    entry = entries[0]
    manifest = _read_json(_verified_blob(root, entry), what="OCI manifest")
    if manifest.get("artifactType") != oci.ARTIFACT_TYPE:
        raise MalformedMessageError(f"{root}: not an EdgeFleet release ({oci.ARTIFACT_TYPE})")
    _verified_blob(root, manifest.get("config") or {})
    descriptors = manifest.get("layers") or []
    layers: list[Layer] = []
    for d in descriptors:
        _verified_blob(root, d)
        title = str((d.get("annotations") or {}).get(TITLE, ""))
        layers.append(Layer(str(d.get("mediaType", "")), d["digest"], int(d["size"]), title))
    signed_layers = [x for x in layers if x.media_type == oci.SIGNED_MANIFEST_TYPE]
    if len(signed_layers) != 1:
        raise MalformedMessageError(f"{root}: expected one signed manifest layer")
    signed_bytes = blob_path(root, signed_layers[0].digest).read_bytes()
    envelope = wire.decode_envelope(signed_bytes)
    if trust is not None:
        trust.verify(envelope, expected_type=signing.MANIFEST_TYPE)
    m = wire.decode_manifest(envelope.payload)
    # the layers must be the very blobs the signed manifest names
    expected = {(x.media_type, x.digest, x.size) for x in release_layers(signed_bytes, m)}
    found = {(x.media_type, x.digest, x.size) for x in layers}
    if expected != found:
        raise IntegrityError(
            m.model_digest, "layers that differ from those the signed manifest names"
        )
    return LayoutRelease(
        root=root,
        manifest_digest=entry["digest"],
        tag=str((entry.get("annotations") or {}).get(REF_NAME, "")),
        signed=envelope,
        manifest=m,
        layers=tuple(layers),
    )


def push_layout(
    release: LayoutRelease,
    registry: oci.Registry,
    *,
    tag: str,
    on_blob: Callable[[Layer, bool], None] | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> str:
    """Push a verified layout: the config and layers (those missing), then the manifest.

    ``on_blob(layer, uploaded)`` runs after each blob; ``on_bytes(n)`` as bytes go out.
    Returns the manifest digest the registry reports.
    """
    config = Layer(oci.EMPTY_TYPE, oci.EMPTY_DIGEST, len(oci.EMPTY_BYTES), "config")
    for layer in (config, *release.layers):
        uploaded = registry.push_blob(release.blob(layer.digest), layer.digest, on_bytes=on_bytes)
        if not uploaded and on_bytes is not None:
            on_bytes(layer.size)
        if on_blob is not None:
            on_blob(layer, uploaded)
    manifest = release.blob(release.manifest_digest).read_bytes()
    return registry.put_manifest(manifest, tag or oci.sanitize_tag(release.manifest.version))


def export_release(
    info: controller_pb2.ReleaseInfo,
    root: Path,
    *,
    artifacts_target: str,
    tag: str = "",
    on_bytes: Callable[[int], None] | None = None,
    tls: rpc.ClientTls | None = None,
) -> LayoutRelease:
    """Export release ``info`` as a layout under ``root``, its blobs fetched from the
    ``ArtifactService`` at ``artifacts_target`` (over ``tls`` if given: the operator API of a
    ``--tls`` controller); returns the layout read back and verified."""

    def fetch_blob(digest: str, partial: Path) -> None:
        done = partial.stat().st_size if partial.exists() else 0

        def on_chunk(now: int, total: int) -> None:
            nonlocal done
            if on_bytes is not None:
                on_bytes(now - done)
            done = now

        if done and on_bytes is not None:
            on_bytes(done)
        artifacts.fetch(artifacts_target, digest, partial, on_chunk=on_chunk, tls=tls)

    write_layout(
        root,
        info.signed_manifest,
        created_ms=info.created_at_ms,
        tag=tag or oci.sanitize_tag(info.version),
        fetch_blob=fetch_blob,
    )
    return read_layout(root, tag=tag or oci.sanitize_tag(info.version))
