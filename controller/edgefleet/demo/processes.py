"""Local processes for a fleet on one machine: start, wait until ready, stop without orphans.

Each process runs in its own process group (``start_new_session``) with its output in a log
file, so ``stop`` can signal the whole group (SIGTERM, then SIGKILL after a grace period) and
a failure can show the log's tail. ``Processes`` stops everything it started, tier by tier,
however the ``with`` block ends; on Linux a process also gets SIGTERM when the one that
started it dies without cleaning up. Used by ``edgectl demo`` and the end-to-end tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from edgefleet.demo.errors import StartError

STOP_GRACE_S = 10.0
# Linux: exec the command with PR_SET_PDEATHSIG = SIGTERM, so it stops even when we are
# SIGKILLed and no ``finally`` runs. The ppid check closes the race with an early death.
_LAUNCHER = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None).prctl(1, signal.SIGTERM)\n"
    "if os.getppid() != int(sys.argv[1]): sys.exit(143)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)
_PROXY_VARS = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "grpc_proxy")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) == 0


def child_env() -> dict[str, str]:
    """Our environment minus proxies (gRPC honours them; loopback must never use one)."""
    env = {k: v for k, v in os.environ.items() if k not in _PROXY_VARS}
    env["no_proxy"] = env["NO_PROXY"] = "127.0.0.1,localhost"
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("EDGEFLEET_LOG_JSON", "0")
    return env


def script(name: str, module: str) -> list[str]:
    """Run console script ``name`` of this interpreter's environment (``module:main``)."""
    exe = Path(sys.executable).parent / name
    if exe.is_file():
        return [str(exe)]
    return [sys.executable, "-c", f"import sys; from {module} import main; sys.exit(main())"]


@dataclass
class Managed:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    tier: int = 0  # higher tiers stop first: agents before the controller before the broker

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def signal(self, sig: int) -> None:
        if self.running():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, sig)  # its own group: it and whatever it started

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        self.signal(signal.SIGTERM)
        try:
            self.popen.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.popen.wait(grace_s)
        # the leader is gone; anything left in its group goes too
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)

    def failed_to_start(self, reason: str) -> StartError:
        return StartError(self.name, reason, log_tail=self.tail())


class Processes:
    """Every process started through it; stopped, newest first, when the block ends."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[Managed] = []

    def spawn(
        self, name: str, argv: list[str], *, tier: int = 0, prefix: Sequence[str] = ()
    ) -> Managed:
        """Start ``argv``; ``prefix`` goes before it (``ip netns exec NS``: run it elsewhere)."""
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{name}.log"
        argv = [*prefix, *argv]
        if sys.platform == "linux":
            argv = [sys.executable, "-S", "-c", _LAUNCHER, str(os.getpid()), *argv]
        with log.open("ab") as out:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=child_env(),
                start_new_session=True,
            )
        managed = Managed(name, popen, log, tier)
        self.started.append(managed)
        return managed

    def stop_all(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop tier by tier, highest first; within a tier SIGTERM all, then wait for each.

        So agents say goodbye while the controller and the broker still run. Whatever
        lingers past ``grace_s`` is killed.
        """
        for tier in sorted({p.tier for p in self.started}, reverse=True):
            group = [p for p in reversed(self.started) if p.tier == tier]
            for p in group:
                p.signal(signal.SIGTERM)
            for p in group:
                p.stop(grace_s)
        self.started.clear()

    def __enter__(self) -> Processes:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()


def wait_for_json(path: Path, proc: Managed, *, timeout_s: float) -> dict[str, Any]:
    """Wait for a process to write its ready file (``controller.json``, ``agent.json``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not proc.running():
            raise proc.failed_to_start(f"exited with code {proc.popen.returncode} while starting")
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
            data = json.loads(path.read_text())
            if isinstance(data, dict):
                return data
        time.sleep(0.05)
    raise proc.failed_to_start(f"wrote no {path.name} within {timeout_s:g}s")


def wait_for_port(port: int, proc: Managed, *, timeout_s: float, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not proc.running():
            raise proc.failed_to_start(f"exited with code {proc.popen.returncode} while starting")
        if port_open(port, host):
            return
        time.sleep(0.05)
    raise proc.failed_to_start(f"did not listen on port {port} within {timeout_s:g}s")
