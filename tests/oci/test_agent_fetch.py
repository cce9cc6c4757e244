"""The agent fetches a release's blobs from an ``oci://`` source: a real registry, resumed."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from edgefleet.agent import fetching
from edgefleet.common import digests, oci
from edgefleet.common.errors import FetchError, IntegrityError, NotFoundError
from edgefleet.edgectl import oci_layout as layout
from tests.conftest import free_port
from tests.oci.conftest import Registry, Release
from tests.oci.test_layout import write

REPO = "edgefleet/agent-fetch"


@pytest.fixture
def source(tmp_path: Path, release: Release, registry: Registry) -> str:
    write(tmp_path / "layout", release)
    back = layout.read_layout(tmp_path / "layout")
    target = oci.Registry(oci.RegistryRef.parse(f"{registry.host}/{REPO}"))
    layout.push_layout(back, target, tag="1.2.0")
    return f"oci+http://{registry.host}/{REPO}"


def download(sources: list[str], digest: str, partial: Path, *, size: int) -> list[int]:
    seen: list[int] = []
    fetching.download(
        sources,
        digest,
        partial,
        size=size,
        deadline_s=30.0,
        stopping=threading.Event(),
        on_bytes=seen.append,
    )
    return seen


def test_fetch_every_blob(tmp_path: Path, release: Release, source: str) -> None:
    for digest, data in release.blobs.items():
        partial = tmp_path / f"{digests.hex_part(digest)}.partial"
        seen = download([source], digest, partial, size=len(data))
        assert sum(seen) == len(data)
        digests.verify_file(partial, digest)


def test_fetch_resumes_a_partial_file(tmp_path: Path, release: Release, source: str) -> None:
    digest = release.manifest.model_digest
    data = release.blobs[digest]
    partial = tmp_path / "model.partial"
    partial.write_bytes(data[:100_001])  # as a cut download leaves it
    seen = download([source], digest, partial, size=len(data))
    assert sum(seen) == len(data) - 100_001, "only the missing bytes travel"
    digests.verify_file(partial, digest)


def test_partial_longer_than_the_blob_starts_over(
    tmp_path: Path, release: Release, source: str
) -> None:
    digest = release.manifest.golden_digest
    data = release.blobs[digest]
    partial = tmp_path / "golden.partial"
    partial.write_bytes(data + b"junk")
    download([source], digest, partial, size=len(data))
    digests.verify_file(partial, digest)


def test_wrong_size_is_an_integrity_error(tmp_path: Path, release: Release, source: str) -> None:
    digest = release.manifest.model_digest
    partial = tmp_path / "model.partial"
    with pytest.raises(IntegrityError):
        download([source], digest, partial, size=12)
    assert not partial.exists()


def test_missing_blob_is_not_found(tmp_path: Path, source: str) -> None:
    digest = digests.of_bytes(b"never pushed")
    with pytest.raises(NotFoundError):
        download([source], digest, tmp_path / "x.partial", size=12)


def test_registry_down_falls_back_to_the_next_source(
    tmp_path: Path, release: Release, source: str
) -> None:
    digest = release.manifest.model_digest
    down = f"oci+http://127.0.0.1:{free_port()}/{REPO}"
    download([down, source], digest, tmp_path / "m.partial", size=release.manifest.model_size)
    digests.verify_file(tmp_path / "m.partial", digest)
    with pytest.raises(FetchError, match="cannot reach registry"):
        download([down], digest, tmp_path / "n.partial", size=release.manifest.model_size)
