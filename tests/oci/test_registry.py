"""Pushing a release to a real distribution registry, and fetching its blobs back."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.common import digests, oci
from edgefleet.common.errors import (
    InvalidInputError,
    NotFoundError,
    PermanentError,
    TransientError,
)
from edgefleet.edgectl import oci_layout as layout
from tests.conftest import free_port
from tests.oci.conftest import Registry, Release, start_registry
from tests.oci.test_layout import write


def pushed(tmp_path: Path, release: Release, registry: Registry, repo: str) -> layout.LayoutRelease:
    write(tmp_path / "layout", release)
    back = layout.read_layout(tmp_path / "layout", trust=release.trust)
    target = oci.Registry(oci.RegistryRef.parse(f"{registry.host}/{repo}"))
    layout.push_layout(back, target, tag="1.2.0")
    return back


def test_push_then_pull_by_tag(tmp_path: Path, release: Release, registry: Registry) -> None:
    back = pushed(tmp_path, release, registry, "edgefleet/digits")
    target = oci.Registry(oci.RegistryRef.parse(f"{registry.host}/edgefleet/digits"))
    manifest = target.get_manifest("1.2.0")
    assert digests.of_bytes(manifest) == back.manifest_digest
    doc = json.loads(manifest)
    assert doc["artifactType"] == oci.ARTIFACT_TYPE
    for d in [doc["config"], *doc["layers"]]:
        data = target.read_blob(d["digest"])
        assert digests.of_bytes(data) == d["digest"]
        assert len(data) == d["size"]
    model = target.read_blob(release.manifest.model_digest)
    assert model == release.blobs[release.manifest.model_digest]


def test_push_twice_is_idempotent(tmp_path: Path, release: Release, registry: Registry) -> None:
    back = pushed(tmp_path, release, registry, "edgefleet/twice")
    target = oci.Registry(oci.RegistryRef.parse(f"{registry.host}/edgefleet/twice"))
    uploads: list[bool] = []
    digest = layout.push_layout(
        back, target, tag="1.2.0", on_blob=lambda _l, up: uploads.append(up)
    )
    assert uploads == [False, False, False, False]  # config, signed manifest, model, golden
    assert digest == back.manifest_digest


def test_registry_down_is_one_clear_error(tmp_path: Path, release: Release) -> None:
    write(tmp_path, release)
    back = layout.read_layout(tmp_path)
    target = oci.Registry(oci.RegistryRef.parse(f"127.0.0.1:{free_port()}/edgefleet/x"))
    with pytest.raises(TransientError, match=r"^cannot reach registry at 127\.0\.0\.1:\d+: "):
        layout.push_layout(back, target, tag="1.2.0")


def test_unknown_manifest_is_not_found(registry: Registry) -> None:
    target = oci.Registry(oci.RegistryRef.parse(f"{registry.host}/edgefleet/none"))
    with pytest.raises(NotFoundError):
        target.get_manifest("9.9.9")


@pytest.mark.parametrize(
    ("text", "host", "repo", "tag", "scheme"),
    [
        ("127.0.0.1:5000/edgefleet/digits", "127.0.0.1:5000", "edgefleet/digits", "", "http"),
        ("localhost:5000/digits:1.2.0", "localhost:5000", "digits", "1.2.0", "http"),
        ("ghcr.io/acme/models/digits:v1", "ghcr.io", "acme/models/digits", "v1", "https"),
        ("registry.local:443/digits", "registry.local:443", "digits", "", "https"),
    ],
)
def test_registry_refs(text: str, host: str, repo: str, tag: str, scheme: str) -> None:
    assert oci.RegistryRef.parse(text) == oci.RegistryRef(host, repo, tag, scheme)


@pytest.mark.parametrize("text", ["digits", "host/Digits", "host/digits:+bad", "/digits"])
def test_bad_registry_refs(text: str) -> None:
    with pytest.raises(InvalidInputError):
        oci.RegistryRef.parse(text)


def test_sources() -> None:
    assert oci.is_source("oci://r.io/x") and not oci.is_source("127.0.0.1:50051")
    assert oci.RegistryRef.from_source("oci+http://r.lan:5000/x").scheme == "http"
    assert oci.RegistryRef.from_source("oci://r.lan:5000/x").scheme == "https"
    assert oci.RegistryRef.from_source("oci://127.0.0.1:5000/x").scheme == "http"


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry that wants basic auth: user ``fleet``, password ``s3cret``."""
    root = tmp_path_factory.mktemp("locked")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # bcrypt for htpasswd; the standard library's until 3.13

        hashed = crypt.crypt("s3cret", crypt.mksalt(crypt.METHOD_BLOWFISH))
    (root / "htpasswd").write_text(f"fleet:{hashed}\n")
    auth = f"auth:\n  htpasswd:\n    realm: edgefleet\n    path: {root / 'htpasswd'}\n"
    port, proc = start_registry(root, auth=auth)
    try:
        yield Registry(port, proc)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_basic_auth(
    tmp_path: Path, release: Release, locked: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, release)
    back = layout.read_layout(tmp_path)
    ref = oci.RegistryRef.parse(f"{locked.host}/edgefleet/locked")
    with pytest.raises(PermanentError, match=r"authentication required \(set EDGEFLEET_REG"):
        layout.push_layout(back, oci.Registry(ref, auth=oci.credentials({})), tag="1.2.0")
    wrong = oci.Registry(ref, auth=("fleet", "nope"))
    with pytest.raises(PermanentError, match="credentials refused") as info:
        layout.push_layout(back, wrong, tag="1.2.0")
    assert "nope" not in str(info.value)
    monkeypatch.setenv(oci.USER_ENV, "fleet")
    monkeypatch.setenv(oci.PASSWORD_ENV, "s3cret")
    good = oci.Registry(ref, auth=oci.credentials())
    assert layout.push_layout(back, good, tag="1.2.0") == back.manifest_digest
    source = f"oci+http://{locked.host}/edgefleet/locked"
    partial = tmp_path / "model.partial"
    oci.fetch(source, release.manifest.model_digest, partial)
    digests.verify_file(partial, release.manifest.model_digest)
