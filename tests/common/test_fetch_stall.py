"""A download whose stream goes silent (a pulled cable: no error, no bytes) is cut after
``stall_s`` and resumes where the bytes on disk end, with the stall watch's smaller chunks."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from edgefleet.common import artifacts, digests
from edgefleet.common.errors import FetchError
from edgefleet.v1 import artifact_pb2, artifact_pb2_grpc


class SilentAfterOneChunk(artifacts.ArtifactServicer):
    """Serves the first chunk of a fetch from offset 0, then says nothing until released."""

    def __init__(self, store: artifacts.BlobStore) -> None:
        super().__init__(store)
        self.blobs = store
        self.release = threading.Event()
        self.chunk_sizes: list[int] = []

    def Fetch(
        self, request: artifact_pb2.FetchRequest, context: grpc.ServicerContext
    ) -> Iterator[artifact_pb2.BlobChunk]:
        self.chunk_sizes.append(request.chunk_size)
        for i, chunk in enumerate(super().Fetch(request, context)):
            if i == 1 and request.offset == 0:
                self.release.wait(30)  # the link is dead: nothing, and no error either
                return
            yield chunk


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, SilentAfterOneChunk]]:
    servicer = SilentAfterOneChunk(artifacts.BlobStore(tmp_path / "blobs"))
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    artifact_pb2_grpc.add_ArtifactServiceServicer_to_server(servicer, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        servicer.release.set()
        grpc_server.stop(0).wait(5)


def test_a_silent_stream_is_cut_after_stall_s_and_resumes(
    tmp_path: Path, server: tuple[str, SilentAfterOneChunk]
) -> None:
    address, servicer = server
    data = bytes(range(256)) * 2048  # 512 KiB
    digest = servicer.blobs.put(data)
    partial = tmp_path / "blob.part"
    with pytest.raises(FetchError, match=r"sent nothing for 0\.5s"):
        artifacts.fetch(address, digest, partial, size=len(data), stall_s=0.5, deadline_s=60)
    assert partial.stat().st_size == artifacts.WATCHED_CHUNK  # the one chunk that came
    assert servicer.chunk_sizes == [artifacts.WATCHED_CHUNK]
    artifacts.fetch(address, digest, partial, size=len(data), stall_s=0.5, deadline_s=60)
    digests.verify_file(partial, digest)
