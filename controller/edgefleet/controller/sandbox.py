"""Running a user's model where it cannot reach the controller's secrets: a sandbox process.

Everything on the controller that parses or runs a model someone uploaded goes through
``Sandbox``: ``onnxspec.inspect`` at registration, golden outputs for a release, the eval set
check and the whole search of a compression. Each call runs in a fresh process, forked from a
clean server process (multiprocessing's ``forkserver``, which holds no open file of the
controller and no copy of its memory: no key, no database), and that process

* works in an empty temporary directory of its own, removed afterwards (ONNX Runtime resolves a
  model's relative file names against the working directory);
* forgets the controller's command line, start directory and all but a few environment
  variables, so it does not learn where the data dir is;
* runs under ``setrlimit``: address space (``RLIMIT_AS``) and CPU seconds (``RLIMIT_CPU``), no
  core files; and is killed at a wall-clock deadline.

Arguments go in and results come out pickled over a pipe. A streamed call (``stream``) also
sends events out as it goes and may ask the controller for things it must not do itself (time a
candidate on a device: that needs the signing key). A child that crashes (a segfault, the CPU
limit), runs out of memory or hangs fails that one call with ``SandboxError``; errors the task
raises on purpose (``InvalidInputError`` naming a bad input) come back as they were raised.

It is not a boundary against code execution inside ONNX Runtime (the child runs as the same
user, and the controller unpickles what it sends); it keeps ONNX Runtime's own file reads, and
any other way a model has to name the controller's files, away from the keys and the data dir,
and keeps one model from taking the controller down. External-data models are refused before
any of this (``externaldata``).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import os
import pickle
import resource
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Generator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from edgefleet.common import errors
from edgefleet.controller.config import SandboxSettings
from edgefleet.controller.errors import SandboxError

log = logging.getLogger(__name__)

T = TypeVar("T")

# Imported once by the fork server, so that each child starts with them loaded (a fork, not a
# fresh interpreter: milliseconds, not a second). A module that fails to import is skipped.
_PRELOAD = [
    "numpy",
    "onnx",
    "onnxruntime",
    "edgefleet.controller.sandbox",
    "edgefleet.controller.onnxspec",
    "edgefleet.controller.releasegolden",
    "edgefleet.controller.compress.searching",
    "edgefleet.controller.compressing",
]
_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(_PRELOAD)

# What a child keeps of the environment: locale, time zone, thread counts. Nothing else (the
# controller's settings, credentials or paths may be there).
_KEEP_ENV = frozenset(
    {"PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"}
)
_POLL_S = 0.2  # how often a waiting parent looks at ``cancelled``
_M_ARENA_MAX = -8  # glibc's mallopt parameter


@dataclass(frozen=True)
class Limits:
    """What one child may use; 0 = no limit."""

    memory_bytes: int
    cpu_s: int
    timeout_s: float


class Channel:
    """The child's side of a streamed call: ``emit`` an event, ``ask`` the controller."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def emit(self, event: object) -> None:
        self._conn.send(("event", event))

    def ask(self, question: object) -> Any:
        """The controller's answer (what ``answer`` returned), or what it raised, raised here."""
        self._conn.send(("ask", question))
        ok, value = self._conn.recv()
        if not ok:
            raise value.rebuild()
        return value


class Sandbox:
    """Runs module-level functions in a confined child process, one child per call, at most
    ``settings.processes`` at a time (a call past that waits for a turn, untimed)."""

    def __init__(self, settings: SandboxSettings | None = None) -> None:
        self.settings = settings or SandboxSettings()
        self._turns = threading.BoundedSemaphore(max(1, self.settings.processes))

    @property
    def limits(self) -> Limits:
        s = self.settings
        return Limits(s.memory_bytes, s.cpu_s, s.timeout_s)

    @property
    def search_limits(self) -> Limits:
        """A search's budget is wall-clock time. Its CPU limit is only a backstop past it: ONNX
        Runtime's threads burn CPU seconds faster than the clock on a machine with several
        cores, so a CPU limit of the same seconds would fire first (and by chance)."""
        s = self.settings
        cpus = os.cpu_count() or 1
        return Limits(s.memory_bytes, math.ceil(s.search_s * cpus) + 2, s.search_s)

    def call(self, fn: Callable[..., T], /, *args: Any, what: str, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in a child; ``what`` names it in errors ("model inspection").

        ``fn`` must be importable by name (a module-level function) and its arguments and
        result picklable."""
        with self._turns, _Child(what, self.limits) as child:
            child.send(("task", fn, args, kwargs, False))
            kind, value = child.receive()
            assert kind == "done", kind
            result: T = value
        return result

    def stream(
        self,
        fn: Callable[..., T],
        /,
        *args: Any,
        what: str,
        answer: Callable[[Any], Any],
        cancelled: threading.Event | None = None,
        **kwargs: Any,
    ) -> Generator[object, None, None]:
        """Run ``fn(channel, *args, **kwargs)`` in a child under the search limits; yield what
        it emits, then its result (once the child is gone and its turn given back, so that the
        caller may use the sandbox with it). ``answer(question)`` runs here for each
        ``channel.ask``. Closing the iterator, or setting ``cancelled``, kills the child."""
        with self._turns, _Child(what, self.search_limits) as child:
            child.send(("task", fn, args, kwargs, True))
            while True:
                kind, value = child.receive(cancelled)
                if kind == "done":
                    break
                if kind == "event":
                    yield value
                    continue
                try:
                    reply: tuple[bool, Any] = (True, answer(value))
                except Exception as exc:  # handed to the child, raised from its ``ask``
                    reply = (False, _portable(exc))
                child.send(reply)
        yield value


class _Child:
    """One child process: started on enter, killed (if still running) and cleaned on exit."""

    def __init__(self, what: str, limits: Limits) -> None:
        self.what = what
        self.limits = limits
        self._workdir = tempfile.mkdtemp(prefix="edgefleet-sandbox-")
        self._conn, child_conn = _CONTEXT.Pipe(duplex=True)
        self._process = _CONTEXT.Process(
            target=_main,
            args=(child_conn, self._workdir, limits),
            name=f"sandbox-{what}",
            daemon=True,
        )
        try:
            self._process.start()
        except BaseException:
            self._conn.close()
            shutil.rmtree(self._workdir, ignore_errors=True)
            raise
        finally:
            child_conn.close()
        self._deadline = time.monotonic() + limits.timeout_s if limits.timeout_s else None

    def __enter__(self) -> _Child:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._process.is_alive():
            self._process.kill()
        self._process.join()
        self._process.close()
        self._conn.close()
        shutil.rmtree(self._workdir, ignore_errors=True)

    def send(self, message: object) -> None:
        try:
            self._conn.send(message)
        except (BrokenPipeError, ConnectionResetError, EOFError):
            # The child stopped reading: it may have said why (a MemoryError) before it went.
            if self._conn.poll():
                self.receive()
            raise self._died() from None

    def receive(self, cancelled: threading.Event | None = None) -> tuple[str, Any]:
        """The child's next message; raises what it raised, or ``SandboxError`` when it died,
        hung past the deadline, or ``cancelled`` was set."""
        while True:
            wait = _POLL_S
            if self._deadline is not None:
                wait = min(wait, self._deadline - time.monotonic())
                if wait <= 0:
                    self._process.kill()
                    raise SandboxError(
                        f"{self.what} timed out after {self.limits.timeout_s:g} s", what=self.what
                    )
            if cancelled is not None and cancelled.is_set():
                self._process.kill()
                raise SandboxError(f"{self.what} was cancelled", what=self.what)
            ready = multiprocessing.connection.wait([self._conn, self._process.sentinel], wait)
            if not ready:
                continue
            if not self._conn.poll():
                raise self._died()
            try:
                kind, *rest = self._conn.recv()
            except (EOFError, ConnectionResetError):
                raise self._died() from None
            if kind == "error":
                raise self._failure(*rest)
            return kind, rest[0]

    def _died(self) -> SandboxError:
        self._process.join(5)
        code = self._process.exitcode
        what, limits = self.what, self.limits
        if code is not None and code < 0:
            number = -code
            try:
                name = signal.Signals(number).name
            except ValueError:
                name = f"signal {number}"
            if number == signal.SIGXCPU:
                reason = f"{what} used up its {limits.cpu_s} s of CPU ({name})"
            elif number == signal.SIGKILL:
                reason = f"{what} was killed ({name}; out of memory?)"
            else:
                reason = f"{what} crashed (signal {number}, {name})"
        else:
            reason = f"{what} exited unexpectedly (status {code})"
        log.warning("sandbox: %s", reason)
        return SandboxError(reason, what=what)

    def _failure(self, raised: _Raised, trace: str) -> BaseException:
        exc = raised.rebuild()
        if isinstance(exc, MemoryError):
            mib = self.limits.memory_bytes >> 20
            limit = f" (the limit is {mib} MiB)" if mib else ""
            return SandboxError(f"{self.what} ran out of memory{limit}", what=self.what)
        if not isinstance(exc, errors.EdgeFleetError):
            log.warning("sandbox: %s failed in the child:\n%s", self.what, trace)
        return exc


# --- the child -----------------------------------------------------------------------------


def _main(conn: Connection, workdir: str, limits: Limits) -> None:
    """The child process: confine itself, then run the one task it is sent."""
    _confine(workdir, limits)
    try:
        _tag, fn, args, kwargs, streamed = conn.recv()
        result = fn(Channel(conn), *args, **kwargs) if streamed else fn(*args, **kwargs)
        conn.send(("done", result))
    except BaseException as exc:  # every failure goes back to the parent, which decides
        conn.send(("error", _portable(exc), traceback.format_exc()))
    finally:
        conn.close()


def _confine(workdir: str, limits: Limits) -> None:
    os.chdir(workdir)
    # multiprocessing hands the child the parent's argv and start directory: forget both.
    multiprocessing.process.ORIGINAL_DIR = workdir  # type: ignore[attr-defined]
    sys.argv = ["edgefleet-sandbox"]
    for key in list(os.environ):
        if key not in _KEEP_ENV:
            del os.environ[key]
    os.environ["TMPDIR"] = workdir
    tempfile.tempdir = workdir
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _fewer_arenas()
    if limits.memory_bytes:
        _lower(resource.RLIMIT_AS, limits.memory_bytes, limits.memory_bytes)
    if limits.cpu_s:
        # SIGXCPU at the soft limit; SIGKILL a second later should anything catch that.
        _lower(resource.RLIMIT_CPU, limits.cpu_s, limits.cpu_s + 1)


def _fewer_arenas() -> None:
    """glibc reserves 64 MiB of address space per malloc arena, up to 8 arenas per core: on a
    machine with many cores the threads of ONNX Runtime and torch would use up RLIMIT_AS with
    reservations alone. Two arenas are plenty for one model."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: no such reservations
        ctypes.CDLL(None).mallopt(_M_ARENA_MAX, 2)


def _lower(which: int, soft: int, hard: int) -> None:
    _, current = resource.getrlimit(which)
    if current != resource.RLIM_INFINITY:
        soft, hard = min(soft, current), min(hard, current)
    resource.setrlimit(which, (soft, hard))


@dataclass(frozen=True)
class _Raised:
    """An exception on its way between the processes: class, args and attributes, rebuilt
    without calling its constructor (``NotFoundError(kind, name)`` would not unpickle)."""

    cls: type[BaseException]
    args: tuple[Any, ...]
    state: dict[str, Any]

    def rebuild(self) -> BaseException:
        exc = self.cls.__new__(self.cls)
        exc.args = self.args
        exc.__dict__.update(self.state)
        return exc


def _portable(exc: BaseException) -> _Raised:
    raised = _Raised(type(exc), exc.args, dict(vars(exc)))
    try:
        pickle.loads(pickle.dumps(raised))  # noqa: S301 - our own bytes, a round trip
    except Exception:  # whatever does not travel: keep the message only
        plain: type[errors.PermanentError] = errors.PermanentError
        if isinstance(exc, errors.InvalidInputError):
            plain = errors.InvalidInputError
        return _Raised(plain, (f"{type(exc).__name__}: {exc}",), {})
    return raised
