"""Shared fixtures: a real Mosquitto broker per test session, free ports, a real trained model.

Tests that need a broker get one started on a free loopback port; they may stop, kill and
restart it. Where Mosquitto is not installed the tests that need it skip and say why.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

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
