"""The process a user's ``--metric-module`` runs in: a script, started by ``metric_hook``.

Run as ``python -I _metric_worker.py`` (by path: it imports nothing of edgefleet), from inside
the compression sandbox child, so it inherits that child's limits (address space, CPU
seconds), its empty working directory and its scrubbed environment. Before it compiles a line
of the user's source it

* asks to be killed when its parent (the sandbox child) dies (``PR_SET_PDEATHSIG``);
* moves its protocol pipes off fds 0/1 (a ``print`` goes to stderr, not into the protocol);
* installs a seccomp filter (``PR_SET_NO_NEW_PRIVS`` first): only reading and writing the fds
  it already holds, memory management, signals' return paths, futexes, clocks, random bytes
  and exiting are allowed; every other system call (``openat``, ``socket``, ``connect``,
  ``execve``, ``clone``/``fork``, ``kill``, ``ptrace``, ...) fails with ``EPERM``. So the code
  can read no file, reach no network, start no process and signal nobody; on an architecture
  the filter does not know, or a kernel without seccomp, the worker refuses to run the code.

The wire, on the moved pipes, frames of an 8-byte big-endian length and a payload: first the
parent sends JSON ``{"source", "function", "origin"}`` and gets ``{"ok": true}`` or
``{"error"}``; then per score an ``.npz`` (``reference/<output>``, ``candidate/<output>``,
read with ``allow_pickle=False``) and gets ``{"score": x}`` or ``{"error"}``. Nothing the user's
code makes is unpickled anywhere: the parent reads JSON and a float.
"""

from __future__ import annotations

# The standard modules marked F401 are preloaded before the filter (an import needs open()):
# with numpy, what a metric module may import.
import collections  # noqa: F401
import ctypes
import difflib  # noqa: F401
import functools  # noqa: F401
import io
import itertools  # noqa: F401
import json
import math
import os
import platform
import re  # noqa: F401
import signal
import statistics  # noqa: F401
import string  # noqa: F401
import struct
import sys
import traceback
import types
import unicodedata  # noqa: F401
import zipfile  # noqa: F401 - np.load's
from typing import Any

import numpy as np

_PR_SET_PDEATHSIG = 1
_PR_SET_SECCOMP = 22
_PR_SET_NO_NEW_PRIVS = 38
_SECCOMP_MODE_FILTER = 2
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_EPERM = 1
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_RET_K = 0x06

# The system calls allowed, by number, per audit architecture: read write close fstat lseek
# mmap mprotect munmap brk rt_sigaction rt_sigprocmask rt_sigreturn pread64 readv writev
# sched_yield mremap madvise nanosleep getpid gettimeofday getrusage sigaltstack gettid futex
# clock_gettime clock_getres clock_nanosleep exit exit_group newfstatat getrandom.
_ALLOWED = {
    "x86_64": (
        0xC000003E,
        "0 1 3 5 8 9 10 11 12 13 14 15 17 19 20 24 25 28 35 39 96 98 131 186 202 228 229 230 "
        "60 231 262 318",
    ),
    "aarch64": (
        0xC00000B7,
        "63 64 57 80 62 222 226 215 214 134 135 139 67 65 66 124 216 233 101 172 169 165 132 "
        "178 98 113 114 115 93 94 79 278",
    ),
}


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _filter() -> bytes:
    machine = platform.machine().lower()
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    if machine not in _ALLOWED:
        raise OSError(f"no seccomp filter for this architecture ({machine})")
    arch, calls = _ALLOWED[machine]
    insns = [
        (_LD_W_ABS, 0, 0, 4),  # seccomp_data.arch
        (_JEQ_K, 1, 0, arch),
        (_RET_K, 0, 0, _RET_ERRNO | _EPERM),  # another ABI: refuse all
        (_LD_W_ABS, 0, 0, 0),  # seccomp_data.nr
    ]
    for call in map(int, calls.split()):
        insns += [(_JEQ_K, 0, 1, call), (_RET_K, 0, 0, _RET_ALLOW)]
    insns.append((_RET_K, 0, 0, _RET_ERRNO | _EPERM))
    return b"".join(struct.pack("=HBBI", *i) for i in insns)


def confine() -> None:
    """No new files, sockets, processes or signals from here on (raises ``OSError`` when the
    kernel cannot do it: the caller must then not run the user's code)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, *[ctypes.c_ulong] * 4]
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    program = _filter()
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // 8, ctypes.addressof(buf))
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(prog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


def _read(fd: int, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _recv(fd: int) -> bytes:
    (size,) = struct.unpack(">Q", _read(fd, 8))
    return _read(fd, size)


def _send(fd: int, doc: dict[str, Any]) -> None:
    data = json.dumps(doc).encode()
    view = memoryview(struct.pack(">Q", len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def _arrays(raw: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    ref: dict[str, Any] = {}
    cand: dict[str, Any] = {}
    with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
        for key in npz.files:
            side, _, name = key.partition("/")
            (ref if side == "reference" else cand)[name] = npz[key]
    return ref, cand


def _warm() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{"reference/x": np.zeros(1), "candidate/x": np.zeros(1)})  # type: ignore[arg-type]
    return buf.getvalue()


def main() -> None:
    fd_in, fd_out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(2, 1)  # the user's print() goes to stderr
    os.close(null)
    spec = json.loads(_recv(fd_in))
    _arrays(_warm())  # whatever np.load imports lazily, imported now
    try:
        confine()
    except (OSError, AttributeError) as exc:
        _send(fd_out, {"error": f"cannot confine the metric module on this controller: {exc}"})
        return
    origin = str(spec.get("origin") or "<metric-module>")
    try:
        module = types.ModuleType("user_metric")
        module.__file__ = origin
        exec(compile(spec["source"], origin, "exec"), module.__dict__)  # noqa: S102 - confined
        fn = getattr(module, spec["function"], None)
        if not callable(fn):
            raise NameError(f"{origin} defines no function {spec['function']!r}")
    except BaseException as exc:  # every failure is the user's: reported
        _send(fd_out, {"error": _describe(exc)})
        return
    _send(fd_out, {"ok": True})
    while True:
        try:
            raw = _recv(fd_in)
        except EOFError:
            return
        try:
            value = float(fn(*_arrays(raw)))
        except BaseException as exc:
            _send(fd_out, {"error": _describe(exc)})
            continue
        _send(fd_out, {"score": value if math.isfinite(value) else str(value)})


def _describe(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)[1:]
    where = f" (line {frames[-1].lineno} of {frames[-1].filename})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


if __name__ == "__main__":
    main()
    sys.exit(0)
