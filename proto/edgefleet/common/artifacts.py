"""Blobs by sha256: a local store, the ``ArtifactService`` that serves it, and a resumable fetch.

The controller serves its store to agents; an agent can serve its own store to neighbours.
``fetch`` appends to a partial file from its current size, so a download cut by a crash or a
lost connection resumes where the bytes on disk end. Verification is the caller's job.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import grpc

from edgefleet.common import digests, rpc
from edgefleet.common.errors import FetchError, IntegrityError, InvalidInputError, NotFoundError
from edgefleet.v1 import artifact_pb2, artifact_pb2_grpc

log = logging.getLogger(__name__)

DEFAULT_CHUNK = 256 * 1024
WATCHED_CHUNK = 64 * 1024  # with a stall watch: half a second a chunk even at 1 Mbit/s
MAX_CHUNK = 4 << 20


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` so that ``path`` holds either the old or the new bytes, even after a crash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


class BlobStore:
    """Content-addressed files under ``root``: ``root/sha256/<hex>``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "sha256").mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.root / "sha256" / digests.hex_part(digest)

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            raise NotFoundError("blob", digest) from None

    def put(self, data: bytes) -> str:
        digest = digests.of_bytes(data)
        if not self.has(digest):
            atomic_write(self.path(digest), data)
        return digest

    def adopt(self, path: Path, digest: str) -> Path:
        """Move a verified file into the store under ``digest``."""
        target = self.path(digest)
        os.replace(path, target)
        fsync_dir(target.parent)
        return target

    def read(self, digest: str) -> bytes:
        try:
            return self.path(digest).read_bytes()
        except FileNotFoundError:
            raise NotFoundError("blob", digest) from None


class ArtifactServicer(artifact_pb2_grpc.ArtifactServiceServicer):
    """Serves ``store``; never bytes that do not match their name.

    Before a blob is served its sha256 is checked against its name, once per version of the
    file (inode, size, mtime, ctime: a change of any re-checks it). A corrupt blob is moved out
    of the store (``<root>/corrupt/``), the call fails with DATA_LOSS, and ``on_corrupt(digest,
    found)`` runs (the controller counts and logs it); the device tries its next source.
    ``on_served(n)`` runs for each chunk of ``n`` bytes sent (the controller's egress counter).
    """

    def __init__(
        self,
        store: BlobStore,
        *,
        on_corrupt: Callable[[str, str], None] | None = None,
        on_served: Callable[[int], None] | None = None,
        verify: bool = True,
    ) -> None:
        self._store = store
        self.store = store
        self._verify = verify  # False: serve as stored (a test's lying source)
        self._on_corrupt = on_corrupt
        self._on_served = on_served
        self._verified: dict[str, tuple[int, int, int, int]] = {}
        self._verify_lock = threading.Lock()

    def _check(self, digest: str, path: Path) -> bool:
        """True when the file at ``path`` holds ``digest``'s bytes (checked once per version)."""
        st = path.stat()
        version = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        with self._verify_lock:
            if self._verified.get(digest) == version:
                return True
        found = digests.of_file(path)
        if found == digest:
            with self._verify_lock:
                self._verified[digest] = version
            return True
        quarantine = self._store.root / "corrupt"
        quarantine.mkdir(exist_ok=True)
        try:
            os.replace(path, quarantine / f"{digests.hex_part(digest)}.{time.time_ns()}")
        except OSError:
            log.exception("could not move the corrupt blob %s aside", digest)
        log.error(
            "blob %s in the store is corrupt (its bytes hash to %s); not served", digest, found
        )
        if self._on_corrupt is not None:
            self._on_corrupt(digest, found)
        return False

    def Stat(
        self, request: artifact_pb2.StatRequest, context: grpc.ServicerContext
    ) -> artifact_pb2.BlobInfo:
        try:
            size = self._store.size(digests.validate(request.digest))
        except (NotFoundError, InvalidInputError) as exc:
            rpc.abort(context, exc)
            raise  # unreachable: abort raises
        return artifact_pb2.BlobInfo(digest=request.digest, size=size)

    def Fetch(
        self, request: artifact_pb2.FetchRequest, context: grpc.ServicerContext
    ) -> Iterator[artifact_pb2.BlobChunk]:
        try:
            path = self._store.path(digests.validate(request.digest))
            if self._verify and not self._check(request.digest, path):
                context.abort(
                    grpc.StatusCode.DATA_LOSS,
                    f"blob {request.digest} is corrupt in this store; try another source",
                )
            f = path.open("rb")
        except InvalidInputError as exc:
            rpc.abort(context, exc)
            return
        except FileNotFoundError:
            rpc.abort(context, NotFoundError("blob", request.digest))
            return
        chunk = min(request.chunk_size or DEFAULT_CHUNK, MAX_CHUNK)
        with f:
            total = os.fstat(f.fileno()).st_size
            if request.offset > total:
                context.abort(
                    grpc.StatusCode.OUT_OF_RANGE, f"offset {request.offset} past size {total}"
                )
            f.seek(request.offset)
            offset = request.offset
            while data := f.read(chunk):
                yield artifact_pb2.BlobChunk(offset=offset, data=data, total_size=total)
                offset += len(data)
                if self._on_served is not None:
                    self._on_served(len(data))


def fetch(
    target: str,
    digest: str,
    partial: Path,
    *,
    size: int | None = None,
    stall_s: float | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    deadline_s: float = 300.0,
    on_chunk: Callable[[int, int], None] | None = None,
    tls: rpc.ClientTls | None = None,
) -> int:
    """Append ``digest``'s bytes from ``target`` to ``partial``, resuming at its current size.

    ``tls``: reach ``target`` over TLS (an enrolled device: mTLS with its certificate).

    Returns the total size. ``on_chunk(done, total)`` runs after each chunk is on disk.
    Raises ``FetchError`` (transient) when the source fails; ``NotFoundError`` when it lacks
    the blob; ``IntegrityError`` when the source says the blob has another size than ``size``
    (what a signed manifest promises) or streams past its size: not a byte past it is written.
    ``stall_s``: a stream that brings nothing for this long is cut (``FetchError``), so a
    silent link (a pulled cable, a dead route) ends the attempt long before its deadline; its
    chunks are then at most ``WATCHED_CHUNK``, so a slow link still brings one in time (and a
    cut loses less of what was under way).
    """
    partial.parent.mkdir(parents=True, exist_ok=True)
    offset = partial.stat().st_size if partial.exists() else 0
    watch: _StallWatch | None = None
    with rpc.channel(target, tls=tls) as channel:
        stub = artifact_pb2_grpc.ArtifactServiceStub(channel)
        try:
            info = stub.Stat(
                artifact_pb2.StatRequest(digest=digest), timeout=rpc.DEFAULT_DEADLINE_S
            )
            total = info.size
            offset = resume_offset(digest, partial, offset, total, size=size, source=target)
            if offset == total:
                return total
            chunk = min(chunk_size, WATCHED_CHUNK) if stall_s else chunk_size
            request = artifact_pb2.FetchRequest(digest=digest, offset=offset, chunk_size=chunk)
            call = stub.Fetch(request, timeout=deadline_s)
            watch = _StallWatch(call, stall_s)
            with partial.open("ab") as f, watch:
                for msg in call:
                    watch.fed()
                    if msg.offset != offset:
                        raise FetchError(
                            digest, f"{target} sent offset {msg.offset}, wanted {offset}"
                        )
                    if offset + len(msg.data) > total:
                        raise IntegrityError(
                            digest,
                            f"{offset + len(msg.data)} bytes or more from {target}, "
                            f"past the blob's size of {total}: the download is cut off",
                        )
                    f.write(msg.data)
                    f.flush()
                    os.fsync(f.fileno())
                    offset += len(msg.data)
                    if on_chunk is not None:
                        on_chunk(offset, total)
        except grpc.RpcError as exc:
            if watch is not None and watch.fired:  # the watch cancelled it
                raise FetchError(
                    digest, f"{target} sent nothing for {stall_s:g}s at byte {offset}: cut"
                ) from exc
            err = rpc.error_from_rpc(exc, target=target)
            if err.code == grpc.StatusCode.NOT_FOUND:
                raise NotFoundError("blob", f"{digest} at {target}") from exc
            raise FetchError(digest, str(err)) from exc
    if offset != total:
        raise FetchError(digest, f"{target} ended the stream at byte {offset} of {total}")
    return total


def resume_offset(
    digest: str,
    partial: Path,
    offset: int,
    total: int,
    *,
    size: int | None,
    source: str,
    logger: logging.Logger = log,
) -> int:
    """Where a download of ``digest`` (``total`` bytes at ``source``) into ``partial``, which
    holds ``offset`` bytes, resumes: ``offset``, or 0 once a ``partial`` longer than the blob
    is removed; ``total``: nothing is left to fetch. IntegrityError where ``total`` is not
    ``size`` (what a signed manifest promises). ``artifacts.fetch`` and ``oci`` share it."""
    if size is not None and total != size:
        raise IntegrityError(
            digest, f"a blob of {total} bytes at {source} where the manifest says {size}"
        )
    if offset > total:
        logger.warning("partial %s longer than the blob; starting over", partial)
        partial.unlink()
        offset = 0
    if offset and offset != total:
        logger.info("resuming %s at byte %d of %d from %s", digest, offset, total, source)
    return offset


class _Cancellable(Protocol):
    def cancel(self) -> bool: ...


class _StallWatch:
    """Cancels ``call`` once ``stall_s`` passed without a ``fed()`` (a thread of its own;
    none when ``stall_s`` is None or 0)."""

    def __init__(self, call: _Cancellable, stall_s: float | None) -> None:
        self._call = call
        self._stall_s = stall_s
        self._last = time.monotonic()
        self._done = threading.Event()
        self.fired = False
        self._thread = threading.Thread(target=self._run, name="fetch-stall-watch", daemon=True)

    def fed(self) -> None:
        self._last = time.monotonic()

    def _run(self) -> None:
        stall_s = self._stall_s or 0.0
        while not self._done.wait(min(0.5, stall_s / 4)):
            if time.monotonic() - self._last > stall_s:
                self.fired = True
                self._call.cancel()
                return

    def __enter__(self) -> _StallWatch:
        if self._stall_s:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()
