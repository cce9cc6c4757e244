"""The agent's fast local path: Predict over a Unix socket without gRPC.

Python's grpcio costs a few hundred microseconds per call before any work is done; for an app
on the same device that is most of a small model's latency. The fast path carries the same
``PredictRequest``/``PredictResponse`` protobufs over a plain Unix stream socket
(``--predict-fast-socket``, default ``DATA_DIR/predict.fast.sock``, mode 0660), one call at a
time per connection, connections kept open:

* request: ``[4-byte big-endian length N][N bytes: a PredictRequest]``;
* reply: ``[4-byte big-endian length N][1-byte status][N bytes]``: status 0 and a
  ``PredictResponse``, or a gRPC status code (3 INVALID_ARGUMENT, 8 RESOURCE_EXHAUSTED,
  14 UNAVAILABLE, ...) and its UTF-8 message, exactly what the gRPC Predict would answer.

The agent serves it with the gRPC servicer's own core, so limits, errors and blame are the
same; shared-memory inputs (``SharedTensor``) are accepted, as on the gRPC Unix socket. A
request over the agent's ``max_message_bytes`` is answered RESOURCE_EXHAUSTED and the
connection closed (its bytes are not read); a frame that is not a ``PredictRequest`` gets
INVALID_ARGUMENT and the connection serves on.

Registered regions (as Triton's system shared-memory extension has them): a connection may
register a ``memfd`` once and name it in any number of its requests, so a large tensor costs
neither a descriptor passed nor a mapping made per request. Control frames are told apart by
the top bit of the header (a request's length is under 2^31): ``[1 byte: CONTROL | kind][3
bytes: big-endian body length L][L bytes]``, the kinds being

* ``REGISTER`` (body ``>I`` region id, one descriptor passed with it: a memfd sealed against
  shrinking and growing, ``sharedmem.SealedRegion``): the agent checks the seals and maps it
  once, for the connection's life; answered ``OK`` with ``>Q`` its size, or INVALID_ARGUMENT
  (no or several descriptors, seals missing, empty), RESOURCE_EXHAUSTED (over ``MAX_REGIONS``
  regions or ``MAX_REGION_BYTES`` bytes on the connection); an id registered again is replaced
  (a region grown); the connection serves on either way;
* ``UNREGISTER`` (body ``>I``): unmapped; ``OK``, or INVALID_ARGUMENT for an unknown id;
* ``OUTPUTS`` (body ``>IQQ`` region id, offset, length), followed at once by a request frame:
  that request's outputs are written into the region at ``[offset, offset + length)``, each at
  the next 64-byte-aligned offset in the reply's order (``output_layout``), and the reply's
  tensors carry no ``data``; outputs that do not fit all come back inline instead.

A ``SharedTensor`` whose ``region`` is ``#ID`` names a region registered on the connection;
``offset + byte_size`` is checked against its size on every request, and the model reads the
bytes in place. The client may rewrite a region once the reply has come (it can only corrupt
its own requests: the seals keep the agent's mapping from faulting). Regions are unmapped when
the connection closes.

``FastPathClient`` is the client: thread-safe (a small pool of connections), errors raised as
``FastPathError``, a ``grpc.RpcError`` with ``code()`` and ``details()``, so callers handle
both paths alike (a missing or dead socket is UNAVAILABLE, a timeout DEADLINE_EXCEEDED).
``request_parts`` encodes inline tensors without copying them: the array's own buffer is sent.
``FastPathClient.predict_arrays`` puts inputs of at least ``shm_threshold`` bytes in a region
the connection registered (grown by registering a larger one under the same id when a request
does not fit), the others inline; with ``shm_outputs`` the outputs come back in a registered
region too.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
from array import array as int_array
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import grpc
import numpy as np
import numpy.typing as npt
from google.protobuf.message import DecodeError

from edgefleet.common import sharedmem, wire
from edgefleet.common.closing import Closing
from edgefleet.v1 import common_pb2, inference_pb2

Array = npt.NDArray[Any]
Buffer = bytes | bytearray | memoryview

DEFAULT_FAST_SOCKET = "predict.fast.sock"
"""The fast path's socket file, beside ``predict.sock`` in the data dir by default."""
REQUEST_HEADER = struct.Struct(">I")
REPLY_HEADER = struct.Struct(">IB")
OK = 0
GRPC_PREFACE = b"PRI "
"""How an HTTP/2 (gRPC) client's first bytes begin: a gRPC client dialled the wrong socket."""
POOL = 4
"""Idle connections a client keeps."""
SEND_BUFFER = 4 << 20
"""A client's socket send buffer: a request of a few MB goes in one write, not in turns of
the default ~200 KB, each waiting for the agent to read (a local round trip each)."""
_CODES = {code.value[0]: code for code in grpc.StatusCode}

CONTROL = 0x80
"""The top bit of a control frame's first byte (a request's length never has it)."""
REGISTER, UNREGISTER, OUTPUTS = 1, 2, 3
"""Control frames' kinds (the first byte's low 7 bits)."""
CONTROL_MAX = 256
"""Longest control frame body: a longer one is refused and the connection closed."""
REGION_ID = struct.Struct(">I")
"""``REGISTER``'s and ``UNREGISTER``'s body: the region id."""
REGION_SIZE = struct.Struct(">Q")
"""``REGISTER``'s answer: the size of the region mapped."""
OUTPUTS_AT = struct.Struct(">IQQ")
"""``OUTPUTS``' body: region id, offset, length."""
MAX_REGIONS = 8
"""Regions one connection may hold registered (the agent's default)."""
MAX_REGION_BYTES = 1 << 30
"""Bytes the regions of one connection may add up to (the agent's default)."""
ALIGN = 64
"""Outputs put in a region each start at a multiple of this past its offset."""
INPUT_REGION, OUTPUT_REGION = 1, 2
"""The ids ``FastPathClient`` registers its input and output regions under."""
OUTPUT_REGION_BYTES = 64 << 10
"""A client's first output region's size (grown to what a reply needed)."""


def control_frame(kind: int, body: bytes) -> bytes:
    """A control frame of ``kind`` (``REGISTER``, ...) with ``body`` (``CONTROL_MAX`` at most)."""
    return bytes([CONTROL | kind]) + len(body).to_bytes(3, "big") + body


def registered(region_id: int) -> str:
    """How a ``SharedTensor`` names the region registered under ``region_id``: ``#ID``."""
    return f"#{region_id}"


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def output_layout(tensors: Sequence[common_pb2.Tensor], offset: int) -> tuple[list[int], int]:
    """Where ``OUTPUTS`` puts each of a reply's tensors (their start offsets, in order), and
    the end of the last one; a tensor's size is what its dtype and shape need."""
    starts, pos = [], offset
    for t in tensors:
        starts.append(pos)
        pos = _aligned(pos + nbytes_of(t))
    return starts, pos


def nbytes_of(t: common_pb2.Tensor) -> int:
    """The bytes a tensor's dtype and shape need (0 for a dtype NumPy does not know)."""
    try:
        itemsize = np.dtype(t.dtype).itemsize
    except TypeError:
        return 0
    count = 1
    for d in t.shape:
        count *= max(d, 0)
    return count * itemsize


class FastPathError(grpc.RpcError):
    """A fast-path Predict failed: ``code()`` and ``details()`` as a gRPC error has them;
    ``answered``: the agent said so (False: no agent could be reached, or it went away during
    the call, UNAVAILABLE; or it did not answer in time, DEADLINE_EXCEEDED)."""

    def __init__(self, code: grpc.StatusCode, details: str, *, answered: bool = True) -> None:
        super().__init__(f"{code.name}: {details}")
        self._code = code
        self._details = details
        self.answered = answered

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def code_of(value: int) -> grpc.StatusCode:
    """The status code a reply's status byte names (UNKNOWN for a value gRPC has not)."""
    return _CODES.get(value, grpc.StatusCode.UNKNOWN)


def sibling(grpc_socket: str | Path) -> Path:
    """Where the fast socket is by default for an agent whose gRPC socket is ``grpc_socket``."""
    return Path(grpc_socket).with_name(DEFAULT_FAST_SOCKET)


def reply_frame(status: int, body: Buffer) -> list[Buffer]:
    """A reply's parts: its header and ``body`` (not copied)."""
    return [REPLY_HEADER.pack(len(body), status), body]


def error_frame(code: grpc.StatusCode, message: str) -> bytes:
    """An error reply: ``code`` and ``message`` (UTF-8, at most 64 KiB of it)."""
    body = message.encode("utf-8", "replace")[: 64 << 10]
    return REPLY_HEADER.pack(len(body), code.value[0]) + body


def send_parts(sock: socket.socket, parts: Sequence[Buffer], fds: Sequence[int] = ()) -> None:
    """Write every part, in order, in as few system calls as the kernel allows; ``fds`` go
    with the first bytes (``SCM_RIGHTS``)."""
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, int_array("i", fds))] if fds else []
    while views:
        sent = sock.sendmsg(views, ancillary)
        ancillary = []
        while views and sent >= len(views[0]):
            sent -= len(views[0])
            views.pop(0)
        if views and sent:
            views[0] = views[0][sent:]


def recv_exact(sock: socket.socket, view: memoryview) -> bool:
    """Fill ``view`` from ``sock``; False on an end of stream before its first byte (a clean
    close), ``ConnectionError`` on one in the middle."""
    got, size = 0, len(view)
    while got < size:
        # MSG_WAITALL: the kernel waits for the rest, not Python one read per chunk queued
        n = sock.recv_into(view[got:], 0, socket.MSG_WAITALL)
        if n == 0:
            if got == 0:
                return False
            raise ConnectionResetError(f"the stream ended after {got} of {size} bytes")
        got += n
    return True


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


_INPUTS_TAG = b"\x0a"  # PredictRequest.inputs = 1, length-delimited
_DATA_TAG = b"\x22"  # Tensor.data = 4, length-delimited


HEADS = 256
"""Tensor heads a process keeps encoded (by name, dtype and shape): an app sends the same few
again and again; the cache is emptied when it is full."""
_heads: dict[tuple[str, np.dtype[Any], tuple[int, ...]], bytes] = {}


def _tensor_head(name: str, dtype: np.dtype[Any], shape: tuple[int, ...], nbytes: int) -> bytes:
    """The bytes of an ``inputs`` entry up to its tensor's data (protobuf costs microseconds
    a message, so they are encoded once per name, dtype and shape)."""
    key = (name, dtype, shape)
    head = _heads.get(key)
    if head is None:
        tensor = common_pb2.Tensor(name=name, dtype=wire.dtype_name(dtype), shape=shape)
        inner = tensor.SerializeToString() + _DATA_TAG + _varint(nbytes)
        head = _INPUTS_TAG + _varint(len(inner) + nbytes) + inner
        if len(_heads) >= HEADS:
            _heads.clear()
        _heads[key] = head
    return head


def _tensor_parts(name: str, array: Array) -> list[Buffer]:
    """One ``inputs`` entry of a PredictRequest: its head, then the array's own bytes."""
    a = np.ascontiguousarray(array)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    nbytes = a.nbytes
    data = a.data.cast("B") if nbytes else b""
    return [_tensor_head(name, a.dtype, a.shape, nbytes), data]


def request_parts(
    inputs: Mapping[str, Array],
    *,
    output_names: Sequence[str] = (),
    release: str = "",
    rest: inference_pb2.PredictRequest | None = None,
) -> list[Buffer]:
    """The wire bytes of a PredictRequest with ``inputs`` inline, as parts whose large ones are
    the arrays' buffers (protobuf fields may come in any order, repeated ones concatenate);
    ``rest``: a request whose fields are added (a staged request's shared inputs)."""
    parts: list[Buffer] = []
    for name, array in inputs.items():
        parts += _tensor_parts(name, array)
    if rest is None and not output_names and not release:
        return parts  # the rest of the request is empty: no bytes
    tail = inference_pb2.PredictRequest(output_names=list(output_names), release=release)
    if rest is not None:
        tail.MergeFrom(rest)
    parts.append(tail.SerializeToString())
    return parts


def _read_varint(view: memoryview, pos: int, end: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it; ``DecodeError`` past ``end``."""
    value = shift = 0
    while pos < end and shift < 64:
        byte = view[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise DecodeError("truncated or overlong varint")


def _fields(view: memoryview, pos: int, end: int) -> list[tuple[int, int, int, int]]:
    """The fields of the message in ``view[pos:end]``: (number, start, value start, end) each;
    ``DecodeError`` for what protobuf would not parse (groups, lengths past the end)."""
    out = []
    while pos < end:
        start = pos
        key = view[pos]
        if key < 0x80:  # a one-byte key (fields 1-15): most of them, read here
            pos += 1
        else:
            key, pos = _read_varint(view, pos, end)
        number, kind = key >> 3, key & 7
        if number == 0:
            raise DecodeError("field number 0")
        if kind == 0:
            _, value_end = _read_varint(view, pos, end)
        elif kind == 2:
            length = view[pos] if pos < end else 0x80
            if length < 0x80:  # a length under 128, one byte
                pos += 1
            else:
                length, pos = _read_varint(view, pos, end)
            value_end = pos + length
        elif kind in (1, 5):
            value_end = pos + (8 if kind == 1 else 4)
        else:
            raise DecodeError(f"wire type {kind} (a group) where none is expected")
        if value_end > end:
            raise DecodeError("a field runs past the end of the message")
        out.append((number, start, pos, value_end))
        pos = value_end
    return out


def split_raw(body: memoryview) -> tuple[list[bytes], list[memoryview], bytes]:
    """A PredictRequest's bytes taken apart without protobuf: each inline tensor's bytes but
    its ``data`` (``heads``), a view of each one's ``data`` in ``body``, and the bytes of the
    other fields (``rest``); ``DecodeError`` where the framing is not protobuf's."""
    heads: list[bytes] = []
    data: list[memoryview] = []
    rest = bytearray()
    for number, start, value, end in _fields(body, 0, len(body)):
        if number != 1 or (body[start] & 7) != 2:
            rest += body[start:end]
            continue
        head = bytearray()
        raw: memoryview = body[0:0]
        for inner, i_start, i_value, i_end in _fields(body, value, end):
            if inner == 4 and (body[i_start] & 7) == 2:
                raw = body[i_value:i_end]  # the last one wins, as protobuf has it
            else:
                head += body[i_start:i_end]
        heads.append(bytes(head))
        data.append(raw)
    return heads, data, bytes(rest)


def parse_split(heads: Sequence[bytes], rest: bytes) -> inference_pb2.PredictRequest:
    """The request ``split_raw`` took apart, its tensors' ``data`` empty (``DecodeError`` where
    protobuf refuses the bytes)."""
    request = inference_pb2.PredictRequest()
    for head in heads:
        request.inputs.add().MergeFromString(head)
    if rest:
        request.MergeFromString(rest)
    return request


def split_request(body: memoryview) -> tuple[inference_pb2.PredictRequest, list[memoryview]]:
    """Parse a PredictRequest's bytes, leaving each inline tensor's ``data`` in ``body``: the
    request (its tensors' ``data`` empty) and, for each ``inputs[i]``, a view of its bytes
    (``wire.array_from_pb(tensor, data)`` reads them in place); ``DecodeError`` where
    protobuf would refuse the bytes. Everything but the tensors' data is parsed by protobuf."""
    heads, data, rest = split_raw(body)
    return parse_split(heads, rest), data


def set_timeouts(sock: socket.socket, receive: float, send: float) -> None:
    """Bound each blocking receive and send (``SO_RCVTIMEO``/``SO_SNDTIMEO``: one expired
    raises ``BlockingIOError``). The socket stays blocking: Python's own timeouts put a
    ``poll`` before every call, which costs a local round trip about 25 us."""
    for option, seconds in ((socket.SO_RCVTIMEO, receive), (socket.SO_SNDTIMEO, send)):
        whole = int(seconds)
        micros = max(int((seconds - whole) * 1e6), 1 if whole == 0 else 0)
        sock.setsockopt(socket.SOL_SOCKET, option, _TIMEVAL.pack(whole, micros))


_TIMEVAL = struct.Struct("ll")


def _connect(path: str, timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise FastPathError(
            grpc.StatusCode.UNAVAILABLE,
            f"cannot connect to unix:{path}: {exc.strerror or exc}",
            answered=False,
        ) from None
    sock.settimeout(None)
    set_timeouts(sock, timeout, timeout)
    with contextlib.suppress(OSError):  # the kernel caps it (net.core.wmem_max)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
    return sock


class FastPathClient(Closing):
    """Predict over an agent's fast socket (thread-safe; connections reused, each with the
    regions it registered)."""

    def __init__(
        self,
        path: str | Path,
        *,
        deadline: float = 5.0,
        shm_threshold: int | None = sharedmem.DEFAULT_THRESHOLD,
        shm_outputs: bool = False,
    ) -> None:
        """``shm_threshold``: ``predict_arrays`` puts inputs of at least this many bytes in a
        registered region (None: every input inline); ``shm_outputs``: its outputs come back
        in a registered region instead of inside the reply."""
        self.path = str(path)
        self.deadline = deadline
        self.shm_threshold = shm_threshold if hasattr(os, "memfd_create") else None
        self.shm_outputs = shm_outputs and hasattr(os, "memfd_create")
        self._lock = threading.Lock()
        self._idle: list[_Connection] = []

    def close(self) -> None:
        """Close the idle connections (those in use close when their call ends)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def predict_arrays(
        self,
        inputs: Mapping[str, Array],
        *,
        output_names: Sequence[str] = (),
        release: str = "",
        timeout: float | None = None,
    ) -> inference_pb2.PredictResponse:
        """One Predict of ``inputs``: those of at least ``shm_threshold`` bytes written into
        the connection's registered input region (registered on first use, registered again
        larger when they do not fit), the others inline; with ``shm_outputs`` the outputs are
        read back from its output region (the reply carries them as usual either way)."""
        arrays: dict[str, Array] = {}
        for name, array in inputs.items():
            a = np.ascontiguousarray(array)
            arrays[name] = a.astype(a.dtype.newbyteorder("<")) if a.dtype.byteorder == ">" else a
        threshold = self.shm_threshold
        large = [] if threshold is None else [n for n, a in arrays.items() if a.nbytes >= threshold]
        if not large and not self.shm_outputs:
            return self.call(
                request_parts(arrays, output_names=output_names, release=release),
                timeout=timeout,
            )
        small = {n: a for n, a in arrays.items() if n not in large}
        tail = (
            inference_pb2.PredictRequest(
                output_names=list(output_names), release=release
            ).SerializeToString()
            if output_names or release
            else b""
        )

        def exchange(conn: _Connection) -> tuple[int, memoryview]:
            parts: list[Buffer] = []
            for name, array in small.items():
                parts += _tensor_parts(name, array)
            if large:
                parts += conn.stage({n: arrays[n] for n in large})
            if tail:
                parts.append(tail)
            prefix = conn.outputs_prefix() if self.shm_outputs else b""
            return _exchange(conn, parts, prefix=prefix)

        return self._call(exchange, timeout, outputs=self.shm_outputs)

    def lease(self, specs: Mapping[str, tuple[Sequence[int], npt.DTypeLike]]) -> Lease:
        """A connection of this client's held for the caller (one thread), with an array per
        ``specs`` entry (name: shape and dtype) in its registered input region, which the app
        writes in place (``Lease.arrays``) and ``Lease.predict`` names: no copy per call.
        ``close()`` closes the connection."""
        wait = self.deadline
        conn, _ = self._take(wait)
        try:
            with _failures(conn, self.path, wait):
                return Lease(self, conn, specs)
        except BaseException:
            conn.close()
            raise

    def predict(
        self,
        request: inference_pb2.PredictRequest,
        *,
        fds: Sequence[int] = (),
        timeout: float | None = None,
    ) -> inference_pb2.PredictResponse:
        """One Predict of a built request (``fds``: the sealed regions its ``@INDEX`` shared
        inputs name, ``sharedmem.Stager.sealed_request``)."""
        return self.call([request.SerializeToString()], fds=fds, timeout=timeout)

    def call(
        self,
        parts: Sequence[Buffer],
        *,
        fds: Sequence[int] = (),
        timeout: float | None = None,
    ) -> inference_pb2.PredictResponse:
        """One Predict of a request given as its wire bytes in parts (``request_parts``);
        ``FastPathError`` when it fails, with the agent's status code and message."""
        return self._call(lambda conn: _exchange(conn, parts, fds), timeout)

    def _call(
        self,
        exchange: Callable[[_Connection], tuple[int, memoryview]],
        timeout: float | None,
        *,
        outputs: bool = False,
    ) -> inference_pb2.PredictResponse:
        """``exchange`` on a pooled connection (again on a fresh one where the agent had
        closed it); ``outputs``: the reply's outputs may be in its output region."""
        wait = self.deadline if timeout is None else timeout
        conn, reused = self._take(wait)
        try:
            with _failures(conn, self.path, wait, stale=reused):
                status, body = exchange(conn)
        except _StaleConnection:  # the agent closed an idle connection: again, on a fresh one
            with _failures(conn, self.path, wait):
                conn = _Connection(_connect(self.path, wait), wait)
            with _failures(conn, self.path, wait):
                status, body = exchange(conn)
        with body:  # released before the buffer may be reused (grown) by another call
            if status != OK:
                message = bytes(body).decode("utf-8", "replace")
            else:
                # protobuf (upb) parses any buffer; its stubs say bytes
                response = inference_pb2.PredictResponse.FromString(cast(bytes, body))
        if outputs and status == OK:
            conn.take_outputs(response)
        self._give_back(conn)
        if status != OK:
            raise FastPathError(code_of(status), message)
        return response

    def _take(self, timeout: float) -> tuple[_Connection, bool]:
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            return _Connection(_connect(self.path, timeout), timeout), False
        if conn.timeout != timeout:
            set_timeouts(conn.sock, timeout, timeout)
            conn.timeout = timeout
        return conn, True

    def _give_back(self, conn: _Connection) -> None:
        with self._lock:
            if len(self._idle) < POOL:
                self._idle.append(conn)
                return
        conn.close()


class _StaleConnection(Exception):
    """A pooled connection the agent had closed while it was idle (``_failures(stale=True)``)."""


@contextlib.contextmanager
def _failures(conn: _Connection, path: str, wait: float, *, stale: bool = False) -> Iterator[None]:
    """What goes wrong talking to the agent, as ``FastPathError`` (the connection closed);
    ``stale``: a connection error is ``_StaleConnection`` instead (the caller tries again)."""
    try:
        yield
    except (TimeoutError, BlockingIOError):  # SO_RCVTIMEO/SO_SNDTIMEO expired
        conn.close()
        raise FastPathError(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"unix:{path} did not answer in {wait} s",
            answered=False,
        ) from None
    except ConnectionError as exc:
        conn.close()
        if stale:
            raise _StaleConnection from exc
        raise FastPathError(
            grpc.StatusCode.UNAVAILABLE,
            f"unix:{path} closed the connection ({exc})",
            answered=False,
        ) from None
    except BaseException:
        conn.close()
        raise


class Lease(Closing):
    """``FastPathClient.lease``: a held connection whose input region holds ``arrays`` (one
    per spec, 64-byte aligned, views of the region: write the tensors there, then call
    ``predict``). One thread at a time; after a failed call the lease is done (its connection
    closed, ``FastPathError`` UNAVAILABLE from then on: take another)."""

    def __init__(
        self,
        client: FastPathClient,
        conn: _Connection,
        specs: Mapping[str, tuple[Sequence[int], npt.DTypeLike]],
    ) -> None:
        self._client, self._conn = client, conn
        layout, offset = [], 0
        for name, (shape, dtype) in specs.items():
            dt = np.dtype(dtype)
            dt = dt.newbyteorder("<") if dt.byteorder == ">" else dt
            count = 1
            for d in shape:
                count *= int(d)
            layout.append((name, tuple(int(d) for d in shape), dt, offset))
            offset += _aligned(count * dt.itemsize)
        region = conn.region(INPUT_REGION, max(offset, 1))
        name = registered(INPUT_REGION)
        self.arrays: dict[str, Array] = {}
        """The inputs, by name: views of the registered region (write them in place)."""
        self._entries: list[bytes] = []
        for n, shape, dt, at in layout:
            a: Array = np.ndarray(shape, dt, buffer=region.buffer, offset=at)
            self.arrays[n] = a
            self._entries.append(_shared_entry(n, a, name, at))
        self._done = False

    def predict(
        self,
        *,
        inline: Mapping[str, Array] | None = None,
        output_names: Sequence[str] = (),
        release: str = "",
    ) -> inference_pb2.PredictResponse:
        """One Predict of ``arrays`` as they are now in the region (and ``inline``: other
        inputs sent in the request)."""
        if self._done:
            raise FastPathError(
                grpc.StatusCode.UNAVAILABLE,
                "this lease's connection is closed (a call failed, or it was closed)",
                answered=False,
            )
        parts: list[Buffer] = []
        for n, a in (inline or {}).items():
            parts += _tensor_parts(n, a)
        parts += self._entries
        if output_names or release:
            rest = inference_pb2.PredictRequest(output_names=list(output_names), release=release)
            parts.append(rest.SerializeToString())
        conn = self._conn
        try:
            with _failures(conn, self._client.path, conn.timeout):
                status, body = _exchange(conn, parts)
        except BaseException:
            self._done = True
            raise
        with body:
            if status != OK:
                raise FastPathError(code_of(status), bytes(body).decode("utf-8", "replace"))
            return inference_pb2.PredictResponse.FromString(cast(bytes, body))

    def close(self) -> None:
        """Close the connection (the agent unmaps its region; never pooled again, as arrays
        of it may still be written)."""
        self._done = True
        self.arrays = {}
        self._conn.close()


_shared_entries: dict[tuple[str, np.dtype[Any], tuple[int, ...], str, int], bytes] = {}
_SHARED_TAG = b"\x22"  # PredictRequest.shared_inputs = 4, length-delimited


def _shared_entry(name: str, a: Array, region: str, offset: int) -> bytes:
    """The bytes of a ``shared_inputs`` entry naming ``a`` at ``offset`` of ``region``
    (encoded once per name, dtype, shape, region and offset, as ``_tensor_head``)."""
    key = (name, a.dtype, a.shape, region, offset)
    entry = _shared_entries.get(key)
    if entry is None:
        msg = inference_pb2.SharedTensor(
            name=name,
            dtype=wire.dtype_name(a.dtype),
            shape=list(a.shape),
            region=region,
            offset=offset,
            byte_size=a.nbytes,
        ).SerializeToString()
        entry = _SHARED_TAG + _varint(len(msg)) + msg
        if len(_shared_entries) >= HEADS:
            _shared_entries.clear()
        _shared_entries[key] = entry
    return entry


class _Connection:
    """An open connection, its receive buffer (grown to the largest reply), its timeout and
    the regions it registered (by id), closed with it."""

    __slots__ = ("buf", "out_need", "regions", "sock", "timeout")

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.timeout = timeout
        self.regions: dict[int, sharedmem.SealedRegion] = {}
        self.out_need = OUTPUT_REGION_BYTES

    def close(self) -> None:
        """Close the socket (the agent unmaps its regions) and this side's regions."""
        self.sock.close()
        for region in self.regions.values():
            region.close()
        self.regions.clear()

    def register(self, region_id: int, fd: int) -> int:
        """Register the sealed memfd ``fd`` as ``region_id`` (``FastPathError`` when the
        agent refuses it); the size the agent mapped."""
        send_parts(self.sock, [control_frame(REGISTER, REGION_ID.pack(region_id))], [fd])
        status, body = _read_reply(self)
        with body:
            if status != OK:
                raise FastPathError(code_of(status), bytes(body).decode("utf-8", "replace"))
            (size,) = REGION_SIZE.unpack(body)
        return int(size)

    def region(self, region_id: int, need: int) -> sharedmem.SealedRegion:
        """The region registered as ``region_id``, at least ``need`` bytes: registered now
        (a larger one under the same id, which the agent swaps in) where it has none that
        large."""
        region = self.regions.get(region_id)
        if region is not None and region.size >= need:
            return region
        size = max(need, 2 * region.size if region is not None else 0)
        fresh = sharedmem.SealedRegion((size + 4095) // 4096 * 4096)
        try:
            self.register(region_id, fresh.fd)
        except BaseException:
            fresh.close()
            raise
        if region is not None:
            region.close()
        self.regions[region_id] = fresh
        return fresh

    def stage(self, arrays: Mapping[str, Array]) -> list[bytes]:
        """Write ``arrays`` into the input region (one after another, 64-byte aligned); the
        ``shared_inputs`` entries naming them."""
        need = sum(_aligned(a.nbytes) for a in arrays.values())
        region = self.region(INPUT_REGION, need)
        name, entries, offset = registered(INPUT_REGION), [], 0
        for n, a in arrays.items():
            region.write(offset, a)  # contiguous, little-endian (predict_arrays)
            entries.append(_shared_entry(n, a, name, offset))
            offset += _aligned(a.nbytes)
        return entries

    def outputs_prefix(self) -> bytes:
        """The ``OUTPUTS`` frame putting a request's outputs in the output region."""
        region = self.region(OUTPUT_REGION, self.out_need)
        return control_frame(OUTPUTS, OUTPUTS_AT.pack(OUTPUT_REGION, 0, region.size))

    def take_outputs(self, response: inference_pb2.PredictResponse) -> None:
        """Fill the reply's outputs that the agent put in the output region (no ``data``
        inline); when they came inline for want of room, grow the region for the next."""
        starts, end = output_layout(response.outputs, 0)
        region = self.regions.get(OUTPUT_REGION)
        for t, start in zip(response.outputs, starts, strict=True):
            n = nbytes_of(t)
            if n and not t.data and region is not None:
                t.data = region.read(start, start + n)
        if region is not None and end > region.size:
            self.out_need = end


def _exchange(
    conn: _Connection, parts: Sequence[Buffer], fds: Sequence[int] = (), *, prefix: bytes = b""
) -> tuple[int, memoryview]:
    """Send one request (after ``prefix``: control frames that come with it), read its reply:
    (status, body: a view of the connection's buffer)."""
    sock = conn.sock
    size = sum(memoryview(p).nbytes for p in parts)
    # refused before it was read (too large, too many connections): the reply says why
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        send_parts(sock, [prefix + REQUEST_HEADER.pack(size), *parts], fds)
    return _read_reply(conn)


def _read_reply(conn: _Connection) -> tuple[int, memoryview]:
    """Read one reply: (status, body: a view of the connection's buffer). Its header and (a
    small reply's) body come in one read: one call at a time per connection, so nothing of
    another reply can follow it."""
    sock = conn.sock
    buf = conn.buf = grown(conn.buf, READ_AHEAD)
    head = REPLY_HEADER.size
    with memoryview(buf) as view:
        got = sock.recv_into(view)
        if got == 0:
            raise ConnectionResetError("closed before any reply")
        if got < head and not recv_exact(sock, view[got:head]):
            raise ConnectionResetError("the stream ended inside a reply header")
    got = max(got, head)
    length, status = REPLY_HEADER.unpack_from(buf)
    end = head + length
    if got > end:
        raise ConnectionResetError(f"{got - end} bytes beyond the reply")
    if end > len(buf):
        bigger = grown(buf, end)
        if bigger is not buf:  # a view of the old one lives on: what came is moved over
            bigger[:got] = buf[:got]
        buf = conn.buf = bigger
    body = memoryview(buf)[head:end]
    if got < end and not recv_exact(sock, memoryview(buf)[got:end]):
        body.release()
        raise ConnectionResetError("the reply was cut short")
    return status, body


READ_AHEAD = 64 << 10
"""A connection's receive buffer is at least this large: a reply up to it is one read."""


def grown(buf: bytearray, size: int) -> bytearray:
    """``buf``, grown to ``size`` bytes at least (a fresh one while a view of it lives on)."""
    if len(buf) >= size:
        return buf
    try:
        buf.extend(bytes(size - len(buf)))
    except BufferError:
        return bytearray(size)
    return buf
