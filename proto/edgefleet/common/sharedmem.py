"""Predict inputs in POSIX shared memory: the agent's fast local path for large tensors.

An app on the same device as the agent writes a large input into a shared-memory object it
created (``/dev/shm/NAME``) and sends, over the agent's Unix socket, a ``PredictRequest``
whose ``shared_inputs`` name the object, the offset, the byte size, the dtype and the shape
(``SharedTensor``), as Triton's system shared-memory extension does. Outputs come back inline.

The agent side (``read``) refuses, as INVALID_ARGUMENT like any bad input: a region name that
is not a plain name (no ``/`` inside, no ``..``, no symlink: ``O_NOFOLLOW``), a region that is
missing or not a regular file, ``offset + byte_size`` beyond the region's size, a byte size
that is not what the dtype and shape need, more than ``MAX_SHARED_BYTES`` in one request. It
copies the bytes out with one ``preadv`` (never an ``mmap``: a client that shrinks its region
during the read gets a short read and an error, not the agent's death by ``SIGBUS``), so the
client may rewrite its region as soon as the reply arrives. The Unix-socket-only rule is the
servicer's (``serving``): it knows the peer.

The client side (``Stager``) keeps a few regions of its own (mode 0600 by default, unlinked on
close), writes each input at or above its threshold into one and inlines the rest. A region
whose call failed is retired, never reused: the agent may still be reading it.

Over the fast local path (``fastpath``) a region may instead be passed as a file descriptor
(``SCM_RIGHTS``): a ``memfd`` sealed against shrinking and growing (``SealedRegion``), named
``@INDEX`` in the request (the index of the descriptor sent with it). Its size cannot change,
so the agent maps it and the model reads the input where the app wrote it, without a copy
(``Stager.sealed_request``); an unsealed descriptor is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import re
import secrets
import stat
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet.common import wire
from edgefleet.common.errors import InvalidInputError
from edgefleet.v1 import inference_pb2

Array = npt.NDArray[Any]

SHM_ROOT = Path("/dev/shm")  # noqa: S108 - the shm_open namespace, O_EXCL names
"""Where Linux keeps POSIX shared-memory objects (``shm_open`` names)."""
MAX_SHARED_BYTES = 1 << 30
"""Most bytes one request may take from shared memory (the agent copies them)."""
DEFAULT_THRESHOLD = 64 << 10
"""Inputs of at least this many bytes go through shared memory by default."""
ALIGN = 64
_NAME = re.compile(r"/?([A-Za-z0-9_][A-Za-z0-9._-]{0,254})")
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def region_name(name: str) -> str:
    """The object's file name in ``SHM_ROOT``; ``InvalidInputError`` unless a plain name."""
    match = _NAME.fullmatch(name)
    if match is None or ".." in name:
        raise InvalidInputError(
            f"shared-memory region {name[:64]!r}: not a region name "
            "(1-255 of A-Z a-z 0-9 . _ -, a leading '/' allowed, no path)"
        )
    return match.group(1)


def _dtype(msg: inference_pb2.SharedTensor) -> np.dtype[Any]:
    try:
        dtype = np.dtype(msg.dtype).newbyteorder("<")
    except TypeError as exc:
        raise InvalidInputError(f"tensor {msg.name!r}: unknown dtype {msg.dtype!r}") from exc
    if dtype.hasobject or dtype.kind in "OUSV":
        raise InvalidInputError(f"tensor {msg.name!r}: dtype {msg.dtype!r} is not numeric")
    return dtype


def _count(msg: inference_pb2.SharedTensor) -> int:
    count = 1
    for d in msg.shape:
        if d < 0:
            raise InvalidInputError(
                f"tensor {msg.name!r}: negative dimension in shape {list(msg.shape)}"
            )
        count *= d
    return count


class Scratch:
    """Reusable memory for the tensors a request takes from shared memory, one buffer per
    thread: a fresh array of a few hundred KiB costs a page fault per page on each call
    (glibc maps and unmaps it), more than the copy itself. An array read into it is valid
    until the same thread's next ``read_all`` with it, so it serves callers that are done
    with a request's inputs before they take the next (the agent's servicer). A buffer over
    ``keep`` bytes is not kept."""

    def __init__(self, *, keep: int = 64 << 20) -> None:
        self._local = threading.local()
        self._keep = keep

    def take(self, size: int) -> memoryview | None:
        """``size`` bytes of this thread's buffer (grown as needed, 64-byte aligned); None
        over ``keep`` (the caller allocates for that request alone)."""
        if size > self._keep:
            return None
        view: memoryview | None = getattr(self._local, "view", None)
        if view is None or len(view) < size:
            buf = np.empty(max(size, 1 << 20) + ALIGN, np.uint8)
            start = -buf.ctypes.data % ALIGN
            view = buf.data[start : start + len(buf) - ALIGN]
            self._local.view = view
        return view[:size]


def read(
    msg: inference_pb2.SharedTensor, *, root: Path = SHM_ROOT, out: memoryview | None = None
) -> Array:
    """Copy one shared tensor out of its region; every mismatch is an ``InvalidInputError``.
    ``out``: where to put it (exactly its byte size; ``Scratch.take``), else a new array."""
    name = region_name(msg.region)
    dtype = _dtype(msg)
    count = _count(msg)
    size = count * dtype.itemsize
    if size != msg.byte_size:
        raise InvalidInputError(
            f"tensor {msg.name!r}: shape {list(msg.shape)} of {msg.dtype} needs {size} bytes, "
            f"the request says {msg.byte_size}"
        )
    if size > MAX_SHARED_BYTES:
        raise InvalidInputError(
            f"tensor {msg.name!r}: {size} bytes in shared memory, over {MAX_SHARED_BYTES}"
        )
    where = f"tensor {msg.name!r}: shared-memory region {name!r}"
    try:
        fd = os.open(root / name, _OPEN_FLAGS)
    except FileNotFoundError:
        raise InvalidInputError(f"{where} does not exist") from None
    except OSError as exc:  # ELOOP: a symlink; EACCES: not readable by the agent's user
        raise InvalidInputError(f"{where} cannot be opened: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InvalidInputError(f"{where} is not a shared-memory object")
        if msg.offset + size > info.st_size:
            raise InvalidInputError(
                f"{where}: bytes {msg.offset}..{msg.offset + size} are beyond its "
                f"{info.st_size} bytes"
            )
        array = np.empty(count, dtype) if out is None else np.frombuffer(out, dtype, count)
        got = os.preadv(fd, [array.data], msg.offset) if size else 0
    finally:
        os.close(fd)
    if got != size:
        raise InvalidInputError(f"{where} shrank while it was read ({got} of {size} bytes)")
    return array.reshape(tuple(msg.shape))


def read_all(
    msgs: Sequence[inference_pb2.SharedTensor],
    *,
    into: dict[str, Array],
    root: Path = SHM_ROOT,
    scratch: Scratch | None = None,
) -> None:
    """Add each shared tensor to ``into`` (the request's inline inputs), each name once;
    ``scratch``: read them into its memory (valid until this thread's next ``read_all``)."""
    total = 0
    for msg in msgs:
        if msg.name in into:
            raise InvalidInputError(f"input {msg.name!r} given more than once")
        total += _aligned(msg.byte_size)
        if total > MAX_SHARED_BYTES:
            raise InvalidInputError(
                f"the request takes over {MAX_SHARED_BYTES} bytes from shared memory"
            )
    space = scratch.take(total) if scratch is not None and total else None
    offset = 0
    for msg in msgs:
        size = msg.byte_size
        out = None if space is None else space[offset : offset + size]
        into[msg.name] = read(msg, root=root, out=out)
        offset += _aligned(size)


def inlined(
    request: inference_pb2.PredictRequest, *, root: Path = SHM_ROOT
) -> inference_pb2.PredictRequest:
    """``request`` with its shared inputs copied in: what may travel to another device."""
    if not request.shared_inputs:
        return request
    arrays: dict[str, Array] = {t.name: np.empty(0) for t in request.inputs}
    read_all(request.shared_inputs, into=arrays, root=root)
    out = inference_pb2.PredictRequest()
    out.CopyFrom(request)
    del out.shared_inputs[:]
    for msg in request.shared_inputs:
        out.inputs.append(wire.array_to_pb(msg.name, arrays[msg.name]))
    return out


# --- the client's side ------------------------------------------------------------------------


def _put(
    buffer: mmap.mmap, region: str, name: str, array: Array, offset: int
) -> inference_pb2.SharedTensor:
    """Write ``array`` (little-endian) into ``buffer`` at ``offset``; the ``SharedTensor``
    naming it in ``region`` (a region's name, or ``@INDEX`` for a passed descriptor)."""
    a = np.asarray(array)
    dtype = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
    view: Array = np.ndarray(a.shape, dtype, buffer=buffer, offset=offset)
    view[...] = a
    return inference_pb2.SharedTensor(
        name=name,
        dtype=wire.dtype_name(dtype),
        shape=list(a.shape),
        region=region,
        offset=offset,
        byte_size=a.nbytes,
    )


class Region:
    """A shared-memory object this process created: ``/dev/shm/edgefleet-PID-RANDOM``."""

    def __init__(self, size: int, *, root: Path = SHM_ROOT, group: int | None = None) -> None:
        """Mode 0600, or 0640 with ``group`` as its group where this process may give it that
        group (the agent's socket's group: who may call Predict may read the region)."""
        self.name = f"edgefleet-{os.getpid()}-{secrets.token_hex(8)}"
        self.path = root / self.name
        self.size = max(size, ALIGN)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            if group is not None:
                with contextlib.suppress(PermissionError):  # not a member: the owner reads it
                    os.fchown(fd, -1, group)
                    os.fchmod(fd, 0o640)
            os.ftruncate(fd, self.size)
            self._map = mmap.mmap(fd, self.size)
        except BaseException:
            os.close(fd)
            self.path.unlink(missing_ok=True)
            raise
        os.close(fd)

    def put(self, name: str, array: Array, *, offset: int = 0) -> inference_pb2.SharedTensor:
        """Write ``array`` at ``offset``; return the ``SharedTensor`` naming it."""
        return _put(self._map, self.name, name, array, offset)

    def close(self) -> None:
        """Unmap and unlink (idempotent)."""
        with contextlib.suppress(BufferError, ValueError):
            self._map.close()
        self.path.unlink(missing_ok=True)


SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
"""What a region passed by descriptor must be sealed against: a size that cannot change, so a
mapping of it cannot fault (``SIGBUS``) under the agent."""


class SealedRegion:
    """A ``memfd`` of this process, sealed at its size: passed by descriptor, never named."""

    def __init__(self, size: int) -> None:
        self.size = max(size, ALIGN)
        self.fd = os.memfd_create("edgefleet-input", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(self.fd, self.size)
            fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, SEALS | fcntl.F_SEAL_SEAL)
            self._map = mmap.mmap(self.fd, self.size)
        except BaseException:
            os.close(self.fd)
            raise

    def put(
        self, name: str, array: Array, *, offset: int = 0, index: int = 0, region: str = ""
    ) -> inference_pb2.SharedTensor:
        """Write ``array`` at ``offset``; the ``SharedTensor`` naming it as descriptor ``index``
        (or as ``region``: ``#ID``, the id the region is registered under, ``fastpath``)."""
        return _put(self._map, region or f"@{index}", name, array, offset)

    @property
    def buffer(self) -> mmap.mmap:
        """The region's mapping, read-write (for arrays written in place)."""
        return self._map

    def write(self, offset: int, array: Array) -> None:
        """Copy a C-contiguous array's bytes to ``offset`` as they are (one ``memcpy``)."""
        if array.nbytes:
            self._map[offset : offset + array.nbytes] = array.data.cast("B")

    def read(self, start: int, end: int) -> bytes:
        """A copy of bytes ``start:end`` (what the agent wrote there: outputs)."""
        return self._map[start:end]

    def close(self) -> None:
        """Unmap and close (idempotent)."""
        with contextlib.suppress(BufferError, ValueError):
            self._map.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def map_sealed(fd: int) -> mmap.mmap:
    """A read-only mapping of a region passed by descriptor; ``InvalidInputError`` unless it is
    a shared-memory object sealed against shrinking and growing (``SEALS``)."""
    return _map(fd, writable=False)[0]


def map_region(fd: int) -> tuple[mmap.mmap, bool]:
    """A mapping of a region registered by descriptor (``fastpath.REGISTER``) and whether it
    is writable (shared read-write where the region is not sealed against writes, so the agent
    may put outputs there; else read-only); refused as ``map_sealed`` refuses."""
    return _map(fd, writable=True)


def _map(fd: int, *, writable: bool) -> tuple[mmap.mmap, bool]:
    try:
        info = os.fstat(fd)
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:  # EINVAL: a file that cannot be sealed (not a memfd)
        seals, info = 0, None
    if info is None or not stat.S_ISREG(info.st_mode) or seals & SEALS != SEALS:
        raise InvalidInputError(
            "a shared-memory region passed by descriptor must be a memfd sealed against "
            "shrinking and growing (F_SEAL_SHRINK | F_SEAL_GROW; sharedmem.SealedRegion)"
        )
    if info.st_size == 0:
        raise InvalidInputError("a shared-memory region passed by descriptor is empty")
    if writable and not seals & (fcntl.F_SEAL_WRITE | _SEAL_FUTURE_WRITE):
        with contextlib.suppress(PermissionError):  # a descriptor opened read-only
            return mmap.mmap(fd, info.st_size, prot=mmap.PROT_READ | mmap.PROT_WRITE), True
    return mmap.mmap(fd, info.st_size, prot=mmap.PROT_READ), False


_SEAL_FUTURE_WRITE = getattr(fcntl, "F_SEAL_FUTURE_WRITE", 0x0010)


def available(root: Path = SHM_ROOT) -> bool:
    """Whether this machine has a writable POSIX shared-memory directory."""
    return root.is_dir() and os.access(root, os.W_OK | os.X_OK)


def socket_path(target: str) -> Path | None:
    """The path of a ``unix:PATH`` (or ``unix://PATH``) gRPC target; None for any other."""
    if not target.startswith("unix:") or target.startswith("unix-abstract:"):
        return None
    path = target.removeprefix("unix:")
    return Path(path.removeprefix("//")) if path.startswith("//") else Path(path)


def stager_for(target: str, *, threshold: int | None = DEFAULT_THRESHOLD) -> Stager | None:
    """A ``Stager`` for calls to ``target`` when it is an agent's Unix socket, shared memory
    is here and ``threshold`` is not None; its regions take the socket's group."""
    path = socket_path(target)
    if path is None or threshold is None or not available():
        return None
    try:
        group: int | None = path.stat().st_gid
    except OSError:
        group = None
    return Stager(threshold=threshold, group=group)


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


class Stager:
    """Builds Predict requests with the large inputs in regions of its own (thread-safe).

    ``with stager.request(inputs) as request: stub.Predict(request)``: a region is taken from
    a small pool for the call and given back after it, or retired when the call raised.
    """

    POOL = 4

    def __init__(
        self, *, threshold: int = DEFAULT_THRESHOLD, root: Path = SHM_ROOT, group: int | None = None
    ) -> None:
        self.threshold = threshold
        self._root, self._group = root, group
        self._lock = threading.Lock()
        self._free: list[Region] = []
        self._sealed: list[SealedRegion] = []
        self._closed = False

    def _split(
        self, inputs: Mapping[str, Array], output_names: Sequence[str], release: str
    ) -> tuple[dict[str, Array], list[str], inference_pb2.PredictRequest]:
        """The inputs made contiguous, the names of those at or over ``threshold`` (for shared
        memory), and the request holding the others inline."""
        arrays = {name: np.ascontiguousarray(a) for name, a in inputs.items()}
        large = [n for n, a in arrays.items() if a.nbytes >= self.threshold]
        request = inference_pb2.PredictRequest(
            inputs=[wire.array_to_pb(n, a) for n, a in arrays.items() if n not in large],
            output_names=list(output_names),
            release=release,
        )
        return arrays, large, request

    @contextlib.contextmanager
    def request(
        self,
        inputs: Mapping[str, Array],
        *,
        output_names: Sequence[str] = (),
        release: str = "",
    ) -> Iterator[inference_pb2.PredictRequest]:
        arrays, large, request = self._split(inputs, output_names, release)
        if not large:
            yield request
            return
        need = sum(_aligned(arrays[n].nbytes) for n in large)
        region = self._take(need)
        try:
            offset = 0
            for n in large:
                request.shared_inputs.append(region.put(n, arrays[n], offset=offset))
                offset += _aligned(arrays[n].nbytes)
            yield request
        except BaseException:
            region.close()  # the agent may still read it: never write it again
            raise
        self._give_back(region)

    @contextlib.contextmanager
    def sealed_request(
        self,
        inputs: Mapping[str, Array],
        *,
        output_names: Sequence[str] = (),
        release: str = "",
    ) -> Iterator[tuple[inference_pb2.PredictRequest, list[int]]]:
        """As ``request``, the large inputs in a ``SealedRegion``: the request and the
        descriptors to send with it (the fast local path only: gRPC cannot carry them)."""
        arrays, large, request = self._split(inputs, output_names, release)
        if not large:
            yield request, []
            return
        need = sum(_aligned(arrays[n].nbytes) for n in large)
        with self._lock:
            fits = [i for i, r in enumerate(self._sealed) if r.size >= need]
            region = self._sealed.pop(fits[0]) if fits else None
        if region is None:
            region = SealedRegion(need)
        try:
            offset = 0
            for n in large:
                request.shared_inputs.append(region.put(n, arrays[n], offset=offset))
                offset += _aligned(arrays[n].nbytes)
            yield request, [region.fd]
        except BaseException:
            region.close()  # the agent may still read it: never written again
            raise
        with self._lock:
            if not self._closed and len(self._sealed) < self.POOL:
                self._sealed.append(region)
                return
        region.close()

    def _take(self, size: int) -> Region:
        with self._lock:
            for i, region in enumerate(self._free):
                if region.size >= size:
                    return self._free.pop(i)
        return Region(size, root=self._root, group=self._group)

    def _give_back(self, region: Region) -> None:
        with self._lock:
            if not self._closed and len(self._free) < self.POOL:
                self._free.append(region)
                return
        region.close()

    def close(self) -> None:
        """Unlink every pooled region (those in use are unlinked when their call ends)."""
        with self._lock:
            self._closed = True
            free, self._free = self._free, []
            sealed, self._sealed = self._sealed, []
        for region in free:
            region.close()
        for fd_region in sealed:
            fd_region.close()
