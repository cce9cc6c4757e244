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

``FastPathClient`` is the client: thread-safe (a small pool of connections), errors raised as
``FastPathError``, a ``grpc.RpcError`` with ``code()`` and ``details()``, so callers handle
both paths alike (a missing or dead socket is UNAVAILABLE, a timeout DEADLINE_EXCEEDED).
``request_parts`` encodes inline tensors without copying them: the array's own buffer is sent.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from array import array as int_array
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import grpc
import numpy as np
import numpy.typing as npt
from google.protobuf.message import DecodeError

from edgefleet.common import wire
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
    """Predict over an agent's fast socket (thread-safe; connections reused)."""

    def __init__(self, path: str | Path, *, deadline: float = 5.0) -> None:
        self.path = str(path)
        self.deadline = deadline
        self._lock = threading.Lock()
        self._idle: list[_Connection] = []

    def close(self) -> None:
        """Close the idle connections (those in use close when their call ends)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.sock.close()

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
        wait = self.deadline if timeout is None else timeout
        conn, reused = self._take(wait)
        try:
            try:
                status, body = _exchange(conn, parts, fds)
            except ConnectionError:
                if not reused:
                    raise
                conn.sock.close()  # the agent closed an idle connection: again, on a fresh one
                conn, reused = _Connection(_connect(self.path, wait), wait), False
                status, body = _exchange(conn, parts, fds)
        except (TimeoutError, BlockingIOError):  # SO_RCVTIMEO/SO_SNDTIMEO expired
            conn.sock.close()
            raise FastPathError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"unix:{self.path} did not answer in {wait} s",
                answered=False,
            ) from None
        except ConnectionError as exc:
            conn.sock.close()
            raise FastPathError(
                grpc.StatusCode.UNAVAILABLE,
                f"unix:{self.path} closed the connection ({exc})",
                answered=False,
            ) from None
        except BaseException:
            conn.sock.close()
            raise
        with body:  # released before the buffer may be reused (grown) by another call
            if status != OK:
                message = bytes(body).decode("utf-8", "replace")
            else:
                # protobuf (upb) parses any buffer; its stubs say bytes
                response = inference_pb2.PredictResponse.FromString(cast(bytes, body))
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
        conn.sock.close()


class _Connection:
    """An open connection, its receive buffer (grown to the largest reply) and timeout."""

    __slots__ = ("buf", "sock", "timeout")

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.timeout = timeout


def _exchange(
    conn: _Connection, parts: Sequence[Buffer], fds: Sequence[int] = ()
) -> tuple[int, memoryview]:
    """Send one request, read its reply: (status, body: a view of the connection's buffer).
    The reply's header and (a small reply's) body come in one read: one call at a time per
    connection, so nothing of another reply can follow it."""
    sock = conn.sock
    size = sum(memoryview(p).nbytes for p in parts)
    # refused before it was read (too large, too many connections): the reply says why
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        send_parts(sock, [REQUEST_HEADER.pack(size), *parts], fds)
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
