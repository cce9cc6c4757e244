"""The agent's side of the fast local path (``edgefleet.common.fastpath``): Predict over a
plain Unix socket, served by ``InferenceServicer.serve``, the gRPC Predict's own core.

A thread accepts connections and gives each its own thread (at most ``max_connections``; one
more is answered RESOURCE_EXHAUSTED and closed). A connection reads a request frame, serves
it, writes the reply, and reads the next. What is refused, and how:

* a length over ``max_message_bytes``: RESOURCE_EXHAUSTED, then the connection is closed (its
  bytes are never read, so memory stays bounded by ``max_connections`` x the limit);
* an HTTP/2 preface (a gRPC client on the wrong socket): its call is answered UNAVAILABLE in
  HTTP/2, as a gRPC server would, saying which socket gRPC uses; then closed;
* bytes that are not a ``PredictRequest``: INVALID_ARGUMENT, and the connection serves on;
* everything else as the gRPC Predict answers it (``serving.Refused``), shared-memory inputs
  included: the caller is local by construction (the socket is mode 0660, like the gRPC one).

A reply over ``max_message_bytes`` is RESOURCE_EXHAUSTED, as gRPC's own limit makes it.

Registered regions (``fastpath.REGISTER``): each connection keeps the regions it registered
mapped (``_Regions``: at most ``max_regions`` of them and ``max_region_bytes`` in all, refused
RESOURCE_EXHAUSTED beyond) until it unregisters them or closes; a request naming ``#ID`` reads
its bytes there in place, its bounds checked against the region's size each time. A refused
registration, an unknown id, bytes beyond a region: INVALID_ARGUMENT, and the connection
serves on. None of that reaches the servicer, so it counts in no health window (as a bad
request refused before the model would not).
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import socket
import struct
import threading
from array import array as int_array
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from edgefleet.agent import tensors
from edgefleet.agent.serving import SOCKET_MODE, InferenceServicer, Refused, clear_stale
from edgefleet.common import fastpath, sharedmem
from edgefleet.common.errors import InvalidInputError
from edgefleet.v1 import inference_pb2

log = logging.getLogger(__name__)

IDLE_TIMEOUT_S = 600.0
"""A connection that sends nothing for this long is closed (a client reconnects on its own)."""
SEND_TIMEOUT_S = 30.0
"""A reply the client does not read for this long closes its connection."""
KEEP_BUFFER = 4 << 20
"""A connection's receive buffer is kept between requests up to this size (a larger one is
freed after its request)."""
_PEERCRED = struct.Struct("3i")


class _FastCaller:
    """``serving.Caller`` of the fast socket: local, never forwarded, no deadline."""

    __slots__ = ("_peer",)

    def __init__(self, peer: str) -> None:
        self._peer = peer

    def local(self) -> bool:
        return True

    def peer(self) -> str:
        return self._peer

    def forwarded(self) -> bool:
        return False

    def time_remaining(self) -> float | None:
        return None


def _peer_of(conn: socket.socket, path: Path) -> str:
    """``unix:PATH`` and the calling process (``SO_PEERCRED``), for logs and messages."""
    try:
        pid, uid, _gid = _PEERCRED.unpack(
            conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        )
    except (OSError, AttributeError):  # no SO_PEERCRED here
        return f"unix:{path}"
    return f"unix:{path} (pid {pid}, uid {uid})"


_H2_FRAME = struct.Struct(">BHBBI")  # length (24 bits: high byte, low 16), type, flags, stream
_H2_HEADERS, _H2_SETTINGS, _H2_GOAWAY = 1, 4, 7
_H2_END_STREAM, _H2_ACK, _H2_END_HEADERS = 1, 1, 4
_H2_PREFACE_REST = len(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") - len(fastpath.GRPC_PREFACE)
_H2_READ_LIMIT = 64 << 10


def _h2_frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    n = len(payload)
    return _H2_FRAME.pack(n >> 16, n & 0xFFFF, kind, flags, stream) + payload


def _hpack_int(value: int, prefix: int = 7) -> bytes:
    limit = (1 << prefix) - 1
    if value < limit:
        return bytes([value])
    out, value = bytearray([limit]), value - limit
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes([*out, value])


def _hpack(headers: list[tuple[str, str]]) -> bytes:
    """Literal header fields, never indexed, no Huffman: what any HPACK decoder reads."""
    out = bytearray()
    for name, value in headers:
        raw_name, raw_value = name.encode(), value.encode()
        out += b"\x00" + _hpack_int(len(raw_name)) + raw_name
        out += _hpack_int(len(raw_value)) + raw_value
    return bytes(out)


def _grpc_message(message: str) -> str:
    """``grpc-message``'s percent-encoding (printable ASCII but '%' as is)."""
    return "".join(
        c if 0x20 <= ord(c) <= 0x7E and c != "%" else "".join(f"%{b:02X}" for b in c.encode())
        for c in message
    )


def _answer_grpc(conn: socket.socket, code: grpc.StatusCode, message: str) -> None:
    """A gRPC client on the fast socket: answer its first call as a gRPC server would refuse it
    (HTTP/2 settings, then trailers with ``code`` and ``message``, then GOAWAY), so the caller
    reads why instead of a protocol error; then the connection is closed by the caller."""
    with contextlib.suppress(OSError):
        conn.settimeout(2.0)
        conn.sendall(_h2_frame(_H2_SETTINGS, 0, 0, b"") + _h2_frame(_H2_SETTINGS, _H2_ACK, 0, b""))
        rest = bytearray(_H2_PREFACE_REST)
        if not fastpath.recv_exact(conn, memoryview(rest)):
            return
        head = bytearray(_H2_FRAME.size)
        read = 0
        while read < _H2_READ_LIMIT and fastpath.recv_exact(conn, memoryview(head)):
            high, low, kind, _flags, stream = _H2_FRAME.unpack(head)
            length = high << 16 | low
            read += length + len(head)
            if read > _H2_READ_LIMIT:
                return
            if length and not fastpath.recv_exact(conn, memoryview(bytearray(length))):
                return
            if kind == _H2_HEADERS:
                trailers = _hpack(
                    [
                        (":status", "200"),
                        ("content-type", "application/grpc"),
                        ("grpc-status", str(code.value[0])),
                        ("grpc-message", _grpc_message(message)),
                    ]
                )
                goaway = struct.pack(">II", stream & 0x7FFFFFFF, 0)
                conn.sendall(
                    _h2_frame(_H2_HEADERS, _H2_END_STREAM | _H2_END_HEADERS, stream, trailers)
                    + _h2_frame(_H2_GOAWAY, 0, 0, goaway)
                )
                return


MAX_FDS = 8
"""Descriptors one request may pass (sealed regions); more: INVALID_ARGUMENT."""
MAX_MAPS = 8
"""Sealed regions a connection keeps mapped (its client reuses a few); the oldest goes first."""
_ANCILLARY = socket.CMSG_SPACE(MAX_FDS * 4)


def _recv_header(conn: socket.socket, head: memoryview) -> tuple[bool, list[int], bool]:
    """Read a request's header and the descriptors sent with it: (whether one came, the
    descriptors, whether some were cut off); ``ConnectionError`` on a stream cut inside it."""
    n, ancillary, flags, _ = conn.recvmsg_into([head], _ANCILLARY)
    fds: list[int] = []
    for level, kind, raw in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            received = int_array("i")
            received.frombytes(raw[: len(raw) - len(raw) % received.itemsize])
            fds += received
    try:
        if n == 0:
            return False, fds, False
        if n < len(head) and not fastpath.recv_exact(conn, head[n:]):
            raise ConnectionResetError("the stream ended inside a header")
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return True, fds, bool(flags & socket.MSG_CTRUNC)


class _Region:
    """A region a connection registered: its mapping, size, and whether the agent may write
    outputs there."""

    __slots__ = ("map", "size", "writable")

    def __init__(self, mapping: mmap.mmap, writable: bool) -> None:
        self.map, self.size, self.writable = mapping, len(mapping), writable

    def close(self) -> None:
        with contextlib.suppress(BufferError):  # unmapped when its last view goes
            self.map.close()


class _Regions:
    """The regions one connection registered, by id (``fastpath.REGISTER``), mapped once and
    kept till they are replaced or unregistered, or the connection closes."""

    __slots__ = ("by_id", "max_bytes", "max_regions")

    def __init__(self, max_regions: int, max_bytes: int) -> None:
        self.by_id: dict[int, _Region] = {}
        self.max_regions, self.max_bytes = max_regions, max_bytes

    def register(self, body: bytes, fds: list[int], cut: bool) -> list[fastpath.Buffer]:
        """Map the one descriptor passed as region ``body``'s id; the reply frame."""
        bad = grpc.StatusCode.INVALID_ARGUMENT
        if len(body) != fastpath.REGION_ID.size:
            return [fastpath.error_frame(bad, f"a REGISTER body is 4 bytes, not {len(body)}")]
        (region_id,) = fastpath.REGION_ID.unpack(body)
        if len(fds) != 1 or cut:
            return [
                fastpath.error_frame(
                    bad,
                    f"REGISTER of region {region_id} passes one descriptor (a sealed memfd), "
                    f"not {'over ' + str(MAX_FDS) if cut else len(fds)}",
                )
            ]
        old = self.by_id.get(region_id)
        if old is None and len(self.by_id) >= self.max_regions:
            return [
                fastpath.error_frame(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"region {region_id}: this connection holds its limit of "
                    f"{self.max_regions} registered regions; unregister one, or register "
                    "a larger one under an id it has",
                )
            ]
        try:
            size = os.fstat(fds[0]).st_size
        except OSError as exc:
            return [fastpath.error_frame(bad, f"region {region_id}: {exc.strerror}")]
        held = sum(r.size for r in self.by_id.values()) - (old.size if old else 0)
        if held + size > self.max_bytes:
            return [
                fastpath.error_frame(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"region {region_id}: {size} bytes more would make this connection's "
                    f"registered regions {held + size} bytes, over its limit of "
                    f"{self.max_bytes}",
                )
            ]
        try:
            mapping, writable = sharedmem.map_region(fds[0])
        except InvalidInputError as exc:
            return [fastpath.error_frame(bad, f"region {region_id}: {exc}")]
        except OSError as exc:
            return [fastpath.error_frame(bad, f"region {region_id}: cannot map it: {exc}")]
        if old is not None:
            old.close()
        self.by_id[region_id] = _Region(mapping, writable)
        return fastpath.reply_frame(fastpath.OK, fastpath.REGION_SIZE.pack(len(mapping)))

    def unregister(self, body: bytes) -> list[fastpath.Buffer]:
        bad = grpc.StatusCode.INVALID_ARGUMENT
        if len(body) != fastpath.REGION_ID.size:
            return [fastpath.error_frame(bad, f"an UNREGISTER body is 4 bytes, not {len(body)}")]
        (region_id,) = fastpath.REGION_ID.unpack(body)
        region = self.by_id.pop(region_id, None)
        if region is None:
            return [fastpath.error_frame(bad, self.unknown(region_id))]
        region.close()
        return fastpath.reply_frame(fastpath.OK, b"")

    def unknown(self, region_id: int | str) -> str:
        ids = ", ".join(map(str, sorted(self.by_id))) or "none"
        return f"region {region_id} is not registered on this connection (registered: {ids})"

    def close(self) -> None:
        for region in self.by_id.values():
            region.close()
        self.by_id.clear()


class _Sealed:
    """The sealed regions one request passed, its connection's mappings of them, and the
    regions the connection registered."""

    __slots__ = ("cut", "fds", "maps", "regions")

    def __init__(
        self,
        fds: list[int],
        cut: bool,
        maps: dict[tuple[int, int], mmap.mmap],
        regions: _Regions,
    ) -> None:
        self.fds, self.cut, self.maps, self.regions = fds, cut, maps, regions

    def inline(
        self, request: inference_pb2.PredictRequest, data: list[memoryview]
    ) -> list[tuple[bool, int, int, int]]:
        """Turn the shared inputs named ``@INDEX`` (a passed descriptor) or ``#ID`` (a
        registered region) into inline inputs whose bytes are views of the mapped region (no
        copy), appended to ``request.inputs`` and ``data``; where each one's bytes are
        (registered, descriptor index or region id, start, end); ``InvalidInputError`` for
        what cannot be served."""
        if self.cut:
            raise InvalidInputError(
                f"the request passed more than {MAX_FDS} descriptors (sealed regions)"
            )
        if not any(m.region[:1] in ("@", "#") for m in request.shared_inputs):
            return []
        named = []
        sources = []
        for msg in request.shared_inputs:
            if msg.region.startswith("#"):
                region_id = msg.region[1:]
                region = self.regions.by_id.get(int(region_id)) if region_id.isdigit() else None
                if region is None:
                    raise InvalidInputError(
                        f"tensor {msg.name!r}: {self.regions.unknown(msg.region[1:17])}"
                    )
                end = msg.offset + msg.byte_size
                if end > region.size:
                    raise InvalidInputError(
                        f"tensor {msg.name!r}: region {msg.region!r}: bytes {msg.offset}..{end} "
                        f"are beyond its {region.size} bytes"
                    )
                request.inputs.add(name=msg.name, dtype=msg.dtype, shape=msg.shape)
                data.append(memoryview(region.map)[msg.offset : end])
                sources.append((True, int(region_id), msg.offset, end))
                continue
            if not msg.region.startswith("@"):
                named.append(msg)
                continue
            index = msg.region[1:]
            if not index.isdigit() or int(index) >= len(self.fds):
                raise InvalidInputError(
                    f"tensor {msg.name!r}: region {msg.region[:16]!r} names no descriptor of "
                    f"the {len(self.fds)} passed with the request"
                )
            mapping = self._mapping(self.fds[int(index)])
            end = msg.offset + msg.byte_size
            if end > len(mapping):
                raise InvalidInputError(
                    f"tensor {msg.name!r}: region {msg.region!r}: bytes {msg.offset}..{end} "
                    f"are beyond its {len(mapping)} bytes"
                )
            request.inputs.add(name=msg.name, dtype=msg.dtype, shape=msg.shape)
            data.append(memoryview(mapping)[msg.offset : end])
            sources.append((False, int(index), msg.offset, end))
        del request.shared_inputs[:]
        request.shared_inputs.extend(named)
        return sources

    def view(self, registered: bool, index: int, start: int, end: int) -> memoryview | None:
        """Bytes ``start:end`` of descriptor ``index``'s region (``registered``: of the region
        registered as ``index``), as ``inline`` finds them; None where ``inline`` would refuse
        them (it then says why)."""
        if self.cut:
            return None
        if registered:
            region = self.regions.by_id.get(index)
            if region is None or end > region.size:
                return None
            return memoryview(region.map)[start:end]
        if index >= len(self.fds):
            return None
        try:
            mapping = self._mapping(self.fds[index])
        except InvalidInputError:
            return None
        if end > len(mapping):
            return None
        return memoryview(mapping)[start:end]

    def _mapping(self, fd: int) -> mmap.mmap:
        info = os.fstat(fd)
        key = (info.st_dev, info.st_ino)
        mapping = self.maps.get(key)
        if mapping is None:  # seals never come off, so a mapping checked once stays safe
            mapping = sharedmem.map_sealed(fd)
            if len(self.maps) >= MAX_MAPS:
                oldest = next(iter(self.maps))
                with contextlib.suppress(BufferError):  # unmapped when its last view goes
                    self.maps.pop(oldest).close()
            self.maps[key] = mapping
        return mapping


PLANS = 16
"""Request layouts a connection keeps plans for (an app sends the same one or two again and
again); the plans are dropped when there are more."""
PLAN_KEY_BYTES = 4096
"""A layout (the request's bytes but its tensors' data) longer than this gets no plan."""
_Source = int | tuple[bool, int, int, int]
"""Where an input's bytes are: the index of an inline tensor's data, or (registered,
descriptor index or region id, start, end) in a sealed region."""
_Key = tuple[tuple[bytes, ...], tuple[int, ...], bytes]


class _Plan:
    """How a request laid out as one served before is served again without protobuf: that
    request, parsed (its sealed shared inputs turned inline), and, for each of its inputs, the
    array its bytes make and where they are. A request's layout (``fastpath.split_raw``: every
    byte but the tensors' data, and the data's lengths) decides all that the parse and the
    tensor checks decide, so what was valid once is valid again; only the passed regions are
    looked at again, each time (an app passes any of a few)."""

    __slots__ = ("inputs", "request")

    def __init__(
        self,
        request: inference_pb2.PredictRequest,
        inputs: list[tuple[str, np.dtype[Any], tuple[int, ...], _Source]],
    ) -> None:
        self.request, self.inputs = request, inputs

    def bind(
        self, data: list[memoryview], sealed: _Sealed
    ) -> tuple[list[memoryview], dict[str, tensors.Array]] | None:
        """The inputs' bytes and arrays for one request; None where a passed region is not
        as the plan needs (the request then goes the whole way, which says why)."""
        views: list[memoryview] = []
        arrays: dict[str, tensors.Array] = {}
        for name, dtype, shape, source in self.inputs:
            if isinstance(source, int):
                view = data[source]
            else:
                mapped = sealed.view(*source)
                if mapped is None:
                    return None
                view = mapped
            views.append(view)
            arrays[name] = np.frombuffer(view, dtype=dtype).reshape(shape)
        return views, arrays


def _plan_of(
    request: inference_pb2.PredictRequest,
    data: list[memoryview],
    inline: int,
    mapped: list[tuple[bool, int, int, int]],
) -> _Plan | None:
    """The plan of a request just served (its first ``inline`` inputs inline, then the
    ``mapped`` ones); None where it has shared inputs still (named regions, copied each time)."""
    if request.shared_inputs:
        return None
    try:
        arrays = tensors.decode_all(request.inputs, data)
    except InvalidInputError:  # serving it says so
        return None
    sources: list[_Source] = [*range(inline), *mapped]
    return _Plan(
        request,
        [
            (name, a.dtype, a.shape, source)
            for (name, a), source in zip(arrays.items(), sources, strict=True)
        ],
    )


def _not_a_request(body: memoryview, exc: DecodeError) -> bytes:
    return fastpath.error_frame(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"{len(body)} bytes that are not a PredictRequest ({exc})",
    )


class FastServer:
    """Serves ``servicer.serve`` on the fast socket at ``path``."""

    def __init__(
        self,
        servicer: InferenceServicer,
        path: Path,
        *,
        max_connections: int,
        max_message_bytes: int,
        max_regions: int = fastpath.MAX_REGIONS,
        max_region_bytes: int = fastpath.MAX_REGION_BYTES,
    ) -> None:
        """``max_regions``, ``max_region_bytes``: what one connection may hold registered."""
        self._servicer = servicer
        self.path = path
        self._max_connections = max_connections
        self._max_bytes = max_message_bytes
        self._max_regions = max_regions
        self._max_region_bytes = max_region_bytes
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return f"unix:{self.path}"

    def start(self) -> str:
        """Bind (mode ``SOCKET_MODE`` before anyone may connect), listen, accept in a thread;
        the ``unix:PATH`` endpoint."""
        clear_stale(self.path, flag="--predict-fast-socket")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(self.path))
            self.path.chmod(SOCKET_MODE)
            listener.listen(64)
        except OSError as exc:
            listener.close()
            raise InvalidInputError(f"cannot listen on {self.endpoint}: {exc}") from exc
        self._listener = listener
        self._thread = threading.Thread(
            target=self._accept, args=(listener,), name="agent-fastpath", daemon=True
        )
        self._thread.start()
        log.info("Predict (fast local path) listening on %s", self.endpoint)
        return self.endpoint

    def stop(self) -> None:
        """Stop accepting, close every connection, remove the socket file."""
        listener, self._listener = self._listener, None
        if listener is None:
            return
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes the accept
        listener.close()
        with self._lock:
            live = list(self._connections)
        for conn in live:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(2)
        self.path.unlink(missing_ok=True)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # stopped
            with self._lock:
                full = len(self._connections) >= self._max_connections
                if not full:
                    self._connections.add(conn)
            if full:
                self._refuse(
                    conn,
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"the agent serves at most {self._max_connections} fast-path connections "
                    "at once; retry later, or reuse a connection",
                )
                continue
            threading.Thread(
                target=self._serve, args=(conn,), name="agent-fastpath-conn", daemon=True
            ).start()

    def _refuse(self, conn: socket.socket, code: grpc.StatusCode, message: str) -> None:
        """Answer ``code`` and close, reading nothing more."""
        with contextlib.suppress(OSError):
            conn.settimeout(1.0)
            conn.sendall(fastpath.error_frame(code, message))
        conn.close()

    def _serve(self, conn: socket.socket) -> None:
        peer = _peer_of(conn, self.path)
        caller = _FastCaller(peer)
        try:
            fastpath.set_timeouts(conn, IDLE_TIMEOUT_S, SEND_TIMEOUT_S)
            self._loop(conn, caller)
        except OSError as exc:  # the client went away mid-frame, or idle (BlockingIOError)
            log.debug("fast path %s: %s", peer, exc)
        except Exception:  # a bug here must not take the listener down
            log.exception("fast path %s: connection failed", peer)
        finally:
            with self._lock:
                self._connections.discard(conn)
            conn.close()

    def _loop(self, conn: socket.socket, caller: _FastCaller) -> None:
        header = bytearray(fastpath.REQUEST_HEADER.size)
        head = memoryview(header)
        buf = bytearray()
        maps: dict[tuple[int, int], mmap.mmap] = {}  # sealed regions this connection passed
        regions = _Regions(self._max_regions, self._max_region_bytes)
        plans: dict[_Key, _Plan] = {}  # this connection's request layouts
        try:
            while True:
                got, fds, cut = _recv_header(conn, head)
                if not got:
                    return
                try:
                    kept: bytearray | None
                    if header[0] & fastpath.CONTROL:
                        step = self._control(conn, header, buf, fds=fds, cut=cut, regions=regions)
                        if isinstance(step, tuple):  # OUTPUTS: the request frame follows
                            kept = self._then(
                                conn, caller, head, buf, state=(maps, regions, plans), where=step
                            )
                        else:
                            kept = step
                    else:
                        sealed = _Sealed(fds, cut, maps, regions)
                        kept = self._frame(conn, caller, header, buf, sealed, plans=plans)
                finally:
                    for fd in fds:
                        os.close(fd)
                if kept is None:
                    return
                buf = kept
        finally:
            regions.close()
            for mapping in maps.values():
                with contextlib.suppress(BufferError):
                    mapping.close()

    def _control(
        self,
        conn: socket.socket,
        header: bytearray,
        buf: bytearray,
        *,
        fds: list[int],
        cut: bool,
        regions: _Regions,
    ) -> bytearray | tuple[int, int, int] | None:
        """Read and answer one control frame whose header is read: the buffer for the next
        frame, or (``OUTPUTS``) where the next request's outputs go, or None: closed."""
        kind = header[0] & ~fastpath.CONTROL
        size = int.from_bytes(header[1:4], "big")
        if size > fastpath.CONTROL_MAX:
            self._refuse(
                conn,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"a control frame (kind {kind}) of {size} bytes: at most {fastpath.CONTROL_MAX}",
            )
            return None
        raw = bytearray(size)
        if size and not fastpath.recv_exact(conn, memoryview(raw)):
            return None
        body = bytes(raw)
        if kind == fastpath.REGISTER:
            reply = regions.register(body, fds, cut)
        elif kind == fastpath.UNREGISTER:
            reply = regions.unregister(body)
        elif kind == fastpath.OUTPUTS and len(body) == fastpath.OUTPUTS_AT.size:
            where: tuple[int, int, int] = fastpath.OUTPUTS_AT.unpack(body)
            return where
        else:
            what = "an OUTPUTS body is 20 bytes" if kind == fastpath.OUTPUTS else "no such kind"
            reply = [
                fastpath.error_frame(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"control frame of kind {kind} and {size} bytes: {what}",
                )
            ]
        fastpath.send_parts(conn, reply)
        return buf

    def _then(
        self,
        conn: socket.socket,
        caller: _FastCaller,
        head: memoryview,
        buf: bytearray,
        *,
        state: tuple[dict[tuple[int, int], mmap.mmap], _Regions, dict[_Key, _Plan]],
        where: tuple[int, int, int],
    ) -> bytearray | None:
        """The request frame after an ``OUTPUTS``: served with its outputs put ``where``
        (``state``: the connection's mappings, regions and plans)."""
        maps, regions, plans = state
        got, fds, cut = _recv_header(conn, head)
        try:
            if not got:
                return None
            header = bytearray(head)
            if header[0] & fastpath.CONTROL or header == fastpath.GRPC_PREFACE:
                self._refuse(
                    conn,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "an OUTPUTS control frame must be followed by a request frame",
                )
                return None
            sealed = _Sealed(fds, cut, maps, regions)
            return self._frame(conn, caller, header, buf, sealed, plans=plans, outputs=where)
        finally:
            for fd in fds:
                os.close(fd)

    def _frame(
        self,
        conn: socket.socket,
        caller: _FastCaller,
        header: bytearray,
        buf: bytearray,
        sealed: _Sealed,
        *,
        plans: dict[_Key, _Plan],
        outputs: tuple[int, int, int] | None = None,
    ) -> bytearray | None:
        """Read and answer one request whose header is read (``outputs``: the region id,
        offset and length its outputs go to); the buffer for the next, None: the connection is
        done."""
        (size,) = fastpath.REQUEST_HEADER.unpack(header)
        if header == fastpath.GRPC_PREFACE:
            _answer_grpc(
                conn,
                grpc.StatusCode.UNAVAILABLE,
                f"{self.path} is the agent's fast local path (length-prefixed "
                "PredictRequest frames, edgefleet.common.fastpath), not gRPC: gRPC clients "
                "use its --predict-socket (predict.sock)",
            )
            return None
        if size > self._max_bytes:
            self._refuse(
                conn,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"a request of {size} bytes is over the agent's limit of "
                f"{self._max_bytes} (predict_max_bytes)",
            )
            return None
        buf = fastpath.grown(buf, size)
        with memoryview(buf)[:size] as body:
            if size and not fastpath.recv_exact(conn, body):
                return None
            reply = self._answer(body, caller, sealed, plans, outputs)
        fastpath.send_parts(conn, reply)
        # a large request's memory is not held while idle
        return bytearray() if len(buf) > KEEP_BUFFER else buf

    def _answer(
        self,
        body: memoryview,
        caller: _FastCaller,
        sealed: _Sealed,
        plans: dict[_Key, _Plan],
        outputs: tuple[int, int, int] | None = None,
    ) -> list[fastpath.Buffer]:
        """The reply frame's parts for one request's bytes (``plans``: the connection's, used
        and added to; ``outputs``: where its outputs go)."""
        try:
            heads, data, rest = fastpath.split_raw(body)
        except DecodeError as exc:
            return [_not_a_request(body, exc)]
        target = None if outputs is None else _output_region(sealed.regions, *outputs)
        if isinstance(target, bytes):
            return [target]
        key: _Key = (tuple(heads), tuple(len(d) for d in data), rest)
        plan = plans.get(key)
        bound = None if plan is None else plan.bind(data, sealed)
        fresh: _Plan | None = None
        if plan is not None and bound is not None:
            request, arrays = plan.request, bound[1]
            data = bound[0]
        else:
            arrays = None
            try:
                request = fastpath.parse_split(heads, rest)
            except DecodeError as exc:
                return [_not_a_request(body, exc)]
            try:
                mapped = sealed.inline(request, data)
            except InvalidInputError as exc:
                return [fastpath.error_frame(grpc.StatusCode.INVALID_ARGUMENT, str(exc))]
            if plan is None and sum(map(len, heads)) + len(rest) <= PLAN_KEY_BYTES:
                fresh = _plan_of(request, data, len(heads), mapped)
        try:
            response = self._servicer.serve(request, caller, data, arrays=arrays)
        except Refused as exc:
            return [fastpath.error_frame(exc.code, exc.message)]
        except Exception as exc:  # as grpcio answers a servicer's exception
            log.exception("fast path Predict failed")
            return [
                fastpath.error_frame(grpc.StatusCode.UNKNOWN, f"Exception calling Predict: {exc}")
            ]
        if fresh is not None:  # kept once served: a layout refused is not worth a plan
            if len(plans) >= PLANS:
                plans.clear()
            plans[key] = fresh
        _put_outputs(response, target, outputs)
        out = response.SerializeToString()
        if len(out) > self._max_bytes:
            return [
                fastpath.error_frame(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"the reply of {len(out)} bytes is over the agent's limit of "
                    f"{self._max_bytes} (predict_max_bytes)",
                )
            ]
        return fastpath.reply_frame(fastpath.OK, out)


def _output_region(regions: _Regions, region_id: int, offset: int, length: int) -> _Region | bytes:
    """The region outputs may go to at ``[offset, offset + length)``, or the error frame
    saying why they may not."""
    target = regions.by_id.get(region_id)
    if target is None:
        problem = regions.unknown(region_id)
    elif not target.writable:
        problem = f"region {region_id} is sealed against writes: no outputs there"
    elif offset + length > target.size:
        problem = (
            f"outputs at bytes {offset}..{offset + length} of region {region_id} are beyond "
            f"its {target.size} bytes"
        )
    else:
        return target
    return fastpath.error_frame(grpc.StatusCode.INVALID_ARGUMENT, problem)


def _put_outputs(
    response: inference_pb2.PredictResponse,
    region: _Region | None,
    outputs: tuple[int, int, int] | None,
) -> None:
    """Write the reply's outputs into ``region`` at ``outputs`` (region id, offset, length) as
    ``fastpath.output_layout`` lays them out, leaving their ``data`` empty; where they do not
    all fit, they all stay inline (and all do without a region)."""
    if region is None or outputs is None:
        return
    _, offset, length = outputs
    starts, end = fastpath.output_layout(response.outputs, offset)
    if end > offset + length or any(len(t.data) != fastpath.nbytes_of(t) for t in response.outputs):
        return
    for t, start in zip(response.outputs, starts, strict=True):
        region.map[start : start + len(t.data)] = t.data
        t.ClearField("data")
