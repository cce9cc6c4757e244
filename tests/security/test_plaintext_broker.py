"""Attack: reading and forging MQTT on the wire when the operator believes the fleet is on TLS.

``edge-controller run`` is mTLS by default (``--tls``) while its ``--mqtt`` default is the
plaintext ``mqtt://127.0.0.1:1883``, and an enrolled agent connected to whatever ``mqtt://``
it was given, without its certificate. Before, both started (the controller with a warning, the
agent silently): telemetry, presence and inference inputs crossed the network in clear, and
anyone on the broker's network could forge them. Now a real ``edge-controller run`` (``--tls``,
the default) and a real enrolled ``edge-agent run`` refuse a plaintext broker at start with a
one-line reason, before anything is made or connected; ``--insecure-mqtt`` (gRPC stays mTLS)
or ``--insecure`` (all plaintext) let them start, warned
(``tests/security/test_grpc_mtls.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Broker, free_port
from tests.controller import support
from tests.security.test_grpc_mtls import enrolled_agent, tls_settings


@pytest.fixture
def ctl(tmp_path: Path, broker: Broker) -> Iterator[support.Running]:
    running = support.start(tls_settings(tmp_path / "ctl", broker))
    yield running
    running.stop()


def controller_run(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "edgefleet.controller", "run", "--data-dir", str(data),
           "--grpc", f"127.0.0.1:{free_port()}", "--api", f"127.0.0.1:{free_port()}",
           "--enroll-listen", f"127.0.0.1:{free_port()}", *args]  # fmt: skip
    env = {**os.environ, "EDGEFLEET_LOG_JSON": "0"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("tls", [[], ["--tls"]], ids=["default", "--tls"])
def test_a_tls_controller_refuses_a_plaintext_broker(
    tmp_path: Path, broker: Broker, tls: list[str]
) -> None:
    data = tmp_path / "data"
    url = broker.url.replace("mqtt://", "mqtt://ops:hunter2@")  # the password is never shown
    result = controller_run(data, "--mqtt", url, "--mqtt-client-id", support.unique("ctl"), *tls)

    said = result.stdout + result.stderr
    assert result.returncode == 1, said
    (line,) = [x for x in said.splitlines() if "plaintext broker" in x]  # one line says why
    assert f"plaintext broker mqtt://ops:***@127.0.0.1:{broker.port} with --tls: refused" in line
    assert "mqtts://" in line and "--mqtt-cert" in line and "--insecure-mqtt" in line
    assert "hunter2" not in said
    assert not (data / "controller.json").exists()
    assert not (data / "controller.db").exists()  # refused before anything was made


def test_the_default_broker_url_is_refused_too(tmp_path: Path) -> None:
    """``edge-controller run`` with no ``--mqtt`` at all: the plaintext default is refused, no
    broker needed to see it."""
    result = controller_run(tmp_path / "data")

    assert result.returncode == 1, result.stderr
    assert "plaintext broker mqtt://127.0.0.1:1883 with --tls: refused" in result.stderr


def test_an_enrolled_agent_refuses_a_plaintext_broker(
    ctl: support.Running, broker: Broker, tmp_path: Path
) -> None:
    agent = enrolled_agent(ctl, broker, tmp_path, "cam-40")
    try:
        agent.launch()
        assert agent.wait_exit() == 2, agent.output()
        (line,) = [x for x in agent.output().splitlines() if "is plaintext: refused" in x]
        assert f"the broker mqtt://127.0.0.1:{broker.port} is plaintext: refused" in line
        assert "mqtts://" in line and "--insecure-mqtt" in line
        assert not (agent.data_dir / "agent.json").exists()

        agent.args.append("--insecure")  # all plaintext on purpose: it starts
        info = agent.start()
        assert info["peer_endpoint"] == ""
        assert agent.terminate() == 0
    finally:
        agent.kill()


def test_the_help_of_both_commands_names_the_opt_in() -> None:
    from typer.testing import CliRunner

    from edgefleet.controller.cli import app as controller_cli
    from tests.agent.clirun import invoke as agent_invoke

    shown = CliRunner().invoke(controller_cli, ["run", "--help"], terminal_width=200).output
    assert "--insecure-mqtt" in shown and "mqtts://" in shown
    assert "--insecure-mqtt" in agent_invoke(["run", "--help"]).output
