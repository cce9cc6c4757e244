"""``pip install edgefleet`` (no extras) installs the agent's needs and nothing of the controller.

The project's wheel goes into a fresh venv without extras (tests/deploy/agentenv.py, cached by
its dependency list): none of scikit-learn, torch, SQLAlchemy, onnx, rich (nor typer, docker,
matplotlib, alembic) is installed, and ``edge-agent run --help`` works there. Without ONNX
Runtime (its flavour is the device's) ``edge-agent run`` says which to install, exit 2.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.deploy import agentenv

pytestmark = pytest.mark.slow

CONTROLLER_ONLY = {
    "scikit-learn", "torch", "sqlalchemy", "onnx", "rich", "typer", "docker", "matplotlib",
    "alembic", "onnxruntime", "pydantic",
}  # fmt: skip


@pytest.fixture(scope="module")
def base_venv() -> Path:
    return agentenv.agent_venv_or_skip()


def test_the_agent_installs_without_the_controllers_libraries(base_venv: Path) -> None:
    names = agentenv.installed(base_venv)
    assert "edgefleet" in names
    assert {"grpcio", "paho-mqtt", "numpy", "protobuf", "cryptography"} <= names
    assert not names & CONTROLLER_ONLY, f"installed without extras: {names & CONTROLLER_ONLY}"


def test_edge_agent_run_help_works_there(base_venv: Path) -> None:
    agent = base_venv / "bin" / "edge-agent"
    result = subprocess.run(
        [agent, "run", "--help"], check=False, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "--mqtt" in result.stdout and "--trusted-key" in result.stdout


def test_without_onnx_runtime_it_says_which_to_install(base_venv: Path, tmp_path: Path) -> None:
    key = tmp_path / "trusted.pem"
    key.write_text("unused: the runtime check comes first\n")
    result = subprocess.run(
        [base_venv / "bin" / "edge-agent", "run", "--device-id", "d1", "--insecure",
         "--data-dir", str(tmp_path / "data"), "--trusted-key", str(key)],
        check=False, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert "ONNX Runtime is not installed: pip install 'edgefleet[cpu]'" in result.stderr
