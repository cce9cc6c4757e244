"""Chunked releases: the controller splits each release's model into content-defined chunks,
stores every chunk as a blob of its own (served by its ArtifactService), and signs the list."""

from __future__ import annotations

from pathlib import Path

from edgefleet.common import artifacts, chunking, desired, digests
from edgefleet.common.errors import FetchError
from edgefleet.common.types import ReleaseRef
from edgefleet.v1 import controller_pb2 as pb
from tests.controller import support
from tests.deltas.models import mlp


def test_release_lists_signed_chunks_served_as_blobs(ctl: support.Running, tmp_path: Path) -> None:
    ctl.stub.InitKey(pb.InitKeyRequest(), timeout=5)
    base, tuned = mlp(), mlp(tuned_layer=2)
    support.upload(ctl.stub, "mlp", base)
    support.upload(ctl.stub, "mlp", tuned)
    ctl.stub.CreateRelease(pb.CreateReleaseRequest(name="mlp", version="1.0.0", model_version=1))
    ctl.stub.CreateRelease(pb.CreateReleaseRequest(name="mlp", version="1.1.0"), timeout=30)

    signed = ctl.controller.releases.get(ReleaseRef("mlp", "1.1.0")).signed_manifest
    manifest, _ = desired.open_manifest(signed, support.trust(ctl.stub))  # the list is signed
    assert [c for c, _ in chunking.split(tuned)] == list(manifest.model_chunks)
    got = b""
    for i, chunk in enumerate(manifest.model_chunks):
        part = tmp_path / f"{i}.part"
        artifacts.fetch(
            ctl.address,
            chunk.digest,
            part,
            size=chunk.size,
            deadline_s=10,
            on_chunk=lambda *_: None,
        )
        got += part.read_bytes()
    assert got == tuned and digests.of_bytes(got) == manifest.model_digest


def test_a_corrupt_chunk_in_the_store_is_never_served(ctl: support.Running, tmp_path: Path) -> None:
    ctl.stub.InitKey(pb.InitKeyRequest(), timeout=5)
    support.upload(ctl.stub, "mlp", mlp())
    reply = ctl.stub.CreateRelease(pb.CreateReleaseRequest(name="mlp", version="1.0.0"), timeout=30)
    chunk = reply.manifest.model_chunks[1]
    stored = ctl.controller.settings.blobs_dir / "sha256" / digests.hex_part(chunk.digest)
    data = bytearray(stored.read_bytes())
    data[10] ^= 0xFF
    stored.write_bytes(bytes(data))

    try:
        artifacts.fetch(
            ctl.address, chunk.digest, tmp_path / "x", size=chunk.size, deadline_s=10,
            on_chunk=lambda *_: None,
        )  # fmt: skip
    except FetchError as exc:
        assert "is corrupt in this store" in str(exc), exc
    else:
        raise AssertionError("a corrupt chunk was served")
    assert ctl.controller.metrics.corrupt_blobs._value.get() == 1
