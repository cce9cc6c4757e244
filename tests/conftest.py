"""Shared fixtures: a real Mosquitto broker per test session, free ports, a real trained model.

Tests that need a broker get one started on a free loopback port; they may stop, kill and
restart it. Where Mosquitto is not installed the tests that need it skip and say why.

Every test is also checked for leaked threads: one that leaves a non-daemon thread, or one of
EdgeFleet's named threads, running after its fixtures close fails (a thread that raises fails
its test too: ``filterwarnings = error`` turns pytest's unhandled-thread-exception warning into
an error).
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import weakref
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import pytest

from edgefleet.demo import digits


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(
    port: int, timeout: float = 10.0, *, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class Broker:
    """A Mosquitto process on a fixed port; ``stop``/``start`` keep the port for reconnect tests."""

    def __init__(self, workdir: Path, *, extra_conf: str = "") -> None:
        self.binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.port = free_port()
        self.conf = workdir / f"mosquitto-{self.port}.conf"
        self.log = workdir / f"mosquitto-{self.port}.log"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "max_queued_messages 100000\n"
            # as root, mosquitto drops to user `mosquitto`, who cannot read pytest's 0700 dirs
            + ("user root\n" if os.geteuid() == 0 else "")
            + f"{extra_conf}\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT
            )
        try:
            wait_port(self.port, proc=self.proc)
        except BaseException:
            self.kill()
            raise

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


def mosquitto_available() -> bool:
    return shutil.which("mosquitto") is not None or Path("/usr/sbin/mosquitto").exists()


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One real Mosquitto for the session (tests use unique device ids, so they do not meet)."""
    if not mosquitto_available():
        pytest.skip("mosquitto is not installed (apt-get install mosquitto; .ci/run does)")
    b = Broker(tmp_path_factory.mktemp("broker"))
    b.start()
    yield b
    b.stop()


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker of the test's own, for tests that stop, kill or restart it."""
    if not mosquitto_available():
        pytest.skip("mosquitto is not installed (apt-get install mosquitto; .ci/run does)")
    b = Broker(tmp_path)
    b.start()
    yield b
    b.kill()


@pytest.fixture(scope="session")
def digits_data() -> digits.DigitsData:
    return digits.load_data()


@pytest.fixture(scope="session")
def digits_model(digits_data: digits.DigitsData) -> digits.TrainedModel:
    return digits.train(digits_data, hidden=32, seed=0)


@pytest.fixture(scope="session")
def digits_model_v2(digits_data: digits.DigitsData) -> digits.TrainedModel:
    return digits.train(digits_data, hidden=48, seed=1)


@pytest.fixture(scope="session")
def digits_model_path(
    digits_model: digits.TrainedModel, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    path = tmp_path_factory.mktemp("models") / "digits.onnx"
    path.write_bytes(digits_model.onnx_bytes)
    return path


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # gRPC honours http_proxy; loopback traffic must never go through one.
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "grpc_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    os.environ.setdefault("EDGEFLEET_LOG_JSON", "0")


# The threads EdgeFleet names (agent-worker, agent-telemetry, agent-predict_N, controller-*,
# compress-*, the controller's grpc_N and api_N pools, a download's fetch-stall-watch, bench's
# simfleet) and paho's network thread (paho-mqtt-client-ID: an MQTT client left connected).
# A test helper's own daemon threads (monitoring-traffic, of a module fixture started on first
# use) are not checked.
EDGEFLEET_THREAD = re.compile(
    r"^(agent-|controller-|compress-|grpc_|api_|fetch-stall-watch|simfleet|paho-mqtt-client-)"
)
THREAD_GRACE_S = 2.0  # paho, gRPC and executor threads wind down shortly after a stop

# A thread pool starts its workers lazily, so a pool of a module- or session-scoped fixture
# (a gRPC server's) may start one during a test: such a worker is its fixture's, not a leak.
# Pools are numbered as they are made to tell them from the test's own.
_pools_made = itertools.count(1)
_pool_number: weakref.WeakKeyDictionary[futures.ThreadPoolExecutor, int] = (
    weakref.WeakKeyDictionary()
)
_pool_init = futures.ThreadPoolExecutor.__init__


def _numbered_pool_init(self: futures.ThreadPoolExecutor, *args: Any, **kwargs: Any) -> None:
    _pool_init(self, *args, **kwargs)
    _pool_number[self] = next(_pools_made)


futures.ThreadPoolExecutor.__init__ = _numbered_pool_init  # type: ignore[method-assign]


def _pool_of(thread: threading.Thread) -> futures.ThreadPoolExecutor | None:
    """The pool whose worker ``thread`` is (CPython starts each with a weakref to its pool)."""
    args = getattr(thread, "_args", ())
    pool = args[0]() if args and isinstance(args[0], weakref.ref) else None
    return pool if isinstance(pool, futures.ThreadPoolExecutor) else None


def _checked(thread: threading.Thread, first_pool: int) -> bool:
    pool = _pool_of(thread)
    if pool is not None and _pool_number.get(pool, first_pool) < first_pool:
        return False  # a worker of a pool made before the test, by a wider fixture
    return not thread.daemon or EDGEFLEET_THREAD.match(thread.name) is not None


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves new non-daemon or EdgeFleet threads running once its own
    fixtures have closed (autouse in the root conftest: set up first, so torn down last)."""
    before = set(threading.enumerate())
    first_pool = next(_pools_made)  # pools numbered from here on are the test's
    yield
    deadline = time.monotonic() + THREAD_GRACE_S
    leaked = []
    for thread in threading.enumerate():
        if thread in before or thread is threading.current_thread():
            continue
        if not _checked(thread, first_pool):
            continue
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            leaked.append(thread)
    if leaked:
        names = ", ".join(f"{t.name} (daemon={t.daemon})" for t in leaked)
        pytest.fail(f"the test left threads running: {names}", pytrace=False)
