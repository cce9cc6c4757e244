"""The OCI image layout of a release: written, read back, every digest checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgefleet.common import digests, oci, signing
from edgefleet.common.errors import IntegrityError, SignatureError
from edgefleet.edgectl import oci_layout as layout
from tests.oci.conftest import Release, make_release


def write(root: Path, release: Release, *, tag: str = "1.2.0") -> str:
    def fetch_blob(digest: str, partial: Path) -> None:
        with partial.open("ab") as f:
            f.write(release.blobs[digest][partial.stat().st_size if partial.exists() else 0 :])

    return layout.write_layout(
        root, release.signed, created_ms=release.created_ms, tag=tag, fetch_blob=fetch_blob
    )


def test_round_trip_verifies_every_blob(tmp_path: Path, release: Release) -> None:
    digest = write(tmp_path, release)
    assert json.loads((tmp_path / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    back = layout.read_layout(tmp_path, trust=release.trust)
    assert back.manifest_digest == digest
    assert back.manifest == release.manifest
    assert back.tag == "1.2.0"
    assert [x.media_type for x in back.layers] == [
        oci.SIGNED_MANIFEST_TYPE,
        oci.MODEL_ONNX_TYPE,
        oci.GOLDEN_TYPE,
    ]
    for d, data in release.blobs.items():
        assert back.blob(d).read_bytes() == data
    signed = back.blob(back.layers[0].digest).read_bytes()
    assert signed == release.signed.SerializeToString(deterministic=True)
    manifest = json.loads(back.blob(digest).read_bytes())
    assert manifest["artifactType"] == oci.ARTIFACT_TYPE
    assert manifest["config"] == {
        "mediaType": oci.EMPTY_TYPE,
        "digest": oci.EMPTY_DIGEST,
        "size": 2,
    }
    assert manifest["annotations"] == {
        "org.opencontainers.image.title": "digits",
        "org.opencontainers.image.version": "1.2.0",
        "org.opencontainers.image.created": "2023-11-14T22:13:20Z",
        "dev.edgefleet.release": "digits:1.2.0",
    }
    assert not list((tmp_path / "blobs" / "sha256").glob(".*")), "no partial files left"


def test_same_release_same_digest(tmp_path: Path, release: Release) -> None:
    assert write(tmp_path / "a", release) == write(tmp_path / "b", release)
    assert write(tmp_path / "a", release) == write(tmp_path / "a", release)  # rerun in place


def test_release_without_golden(tmp_path: Path) -> None:
    release = make_release(golden=False)
    write(tmp_path, release)
    back = layout.read_layout(tmp_path, trust=release.trust)
    assert [x.media_type for x in back.layers] == [oci.SIGNED_MANIFEST_TYPE, oci.MODEL_ONNX_TYPE]


@pytest.mark.parametrize("which", ["model", "golden", "signed", "manifest"])
def test_tampered_blob_is_detected(tmp_path: Path, release: Release, which: str) -> None:
    digest = write(tmp_path, release)
    target = {
        "model": release.manifest.model_digest,
        "golden": release.manifest.golden_digest,
        "signed": digests.of_bytes(release.signed.SerializeToString(deterministic=True)),
        "manifest": digest,
    }[which]
    path = layout.blob_path(tmp_path, target)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError) as info:
        layout.read_layout(tmp_path)
    assert info.value.digest == target


def test_untrusted_signature_is_refused(tmp_path: Path, release: Release) -> None:
    write(tmp_path, release)
    with pytest.raises(SignatureError, match="unknown key"):
        layout.read_layout(tmp_path, trust=signing.TrustStore([signing.generate().public_key()]))


def test_layers_must_match_the_signed_manifest(tmp_path: Path, release: Release) -> None:
    """A consistent layout whose model layer is not the signed model is refused."""
    other = make_release(model_size=1000)
    write(tmp_path, release)
    manifest_path = next(
        p
        for p in (tmp_path / "blobs" / "sha256").iterdir()
        if p.read_bytes().startswith(b"{") and b"layers" in p.read_bytes()
    )
    manifest = json.loads(manifest_path.read_bytes())
    fake = other.blobs[other.manifest.model_digest]
    layout.blob_path(tmp_path, other.manifest.model_digest).write_bytes(fake)
    manifest["layers"][1]["digest"] = other.manifest.model_digest
    manifest["layers"][1]["size"] = len(fake)
    data = layout.dumps(manifest)
    new_digest = digests.of_bytes(data)
    layout.blob_path(tmp_path, new_digest).write_bytes(data)
    index = json.loads((tmp_path / "index.json").read_bytes())
    index["manifests"][0].update(digest=new_digest, size=len(data))
    (tmp_path / "index.json").write_bytes(layout.dumps(index))
    with pytest.raises(IntegrityError, match="signed manifest"):
        layout.read_layout(tmp_path)


def test_tags_are_sanitized() -> None:
    assert oci.sanitize_tag("1.2.0") == "1.2.0"
    assert oci.sanitize_tag("1.2.0+build.7") == "1.2.0_build.7"
    assert oci.sanitize_tag("1.0.0-rc.1") == "1.0.0-rc.1"
