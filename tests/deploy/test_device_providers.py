"""Execution providers for real, in a device's own environment: the ONNX Runtime flavours that
run here, each in a venv of its own with this checkout's wheel (tests/deploy/agentenv.py,
cached): ``edgefleet[openvino]`` (onnxruntime-openvino) and ``edgefleet[gpu]`` (onnxruntime-gpu
without the CUDA libraries, on a machine without a GPU: it lists CUDA and TensorRT, which do
not start).

Each test enrolls that venv's real ``edge-agent`` with a real controller (mTLS on the devices'
port, enrollment on its TLS listener; the session's plaintext broker, ``--insecure-mqtt``),
makes releases with ``edgectl release create --providers`` and rolls them out with ``edgectl
deploy --wait``. OpenVINO first: the release runs on OpenVINOExecutionProvider, no fallback,
and Predict answers as CPU ONNX Runtime does (within float tolerance); OpenVINO asked for an
NPU (none here): it is in the wheel but does not initialise, the release runs on the CPU and
the fallback is an event and shows in ``edgectl devices list``. The GPU build: a TensorRT,
CUDA, CPU preference falls back to the CPU the same way. (tests/agent/test_providers.py
covers the CPU-only wheel in-process.)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from edgefleet.common import wire
from edgefleet.demo import digits
from edgefleet.edgectl.output import short_provider
from tests.agent.helpers import AgentProcess, predict
from tests.conftest import Broker
from tests.controller import support
from tests.deploy import agentenv
from tests.e2e.conftest import Cli
from tests.security.test_grpc_mtls import tls_settings
from tests.security.test_peer_fetch_processes import agent_process

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

OV = "OpenVINOExecutionProvider"
CPU = "CPUExecutionProvider"
# The OpenVINO CPU plugin computes in bf16 where the CPU has it, unless told FP32.
OV_CPU_FP32 = "openvino:device_type=CPU:precision=FP32"
OV_NPU = "openvino:device_type=NPU,cpu"
GPU_FIRST = "TensorrtExecutionProvider:trt_fp16_enable=1,cuda,cpu"


@pytest.fixture
def ctl(tmp_path: Path, broker: Broker) -> Iterator[support.Running]:
    running = support.start(tls_settings(tmp_path / "ctl", broker))
    yield running
    running.stop()


@pytest.fixture
def cli(ctl: support.Running, tmp_path: Path) -> Cli:
    """edgectl on the controller's operator API (TLS), as admin; its signing key made and
    written for the agents to trust (``tmp_path/trusted.pem``)."""
    cli = Cli(ctl.api, ctl.controller.settings.admin_token_file, ctl.api_ca)
    cli.ok("keys", "init", "--out", tmp_path / "trusted.pem")
    return cli


DEADLINE_S = 300  # generous: a loaded machine (a deploy; the controller's model sandbox starting)


@pytest.fixture(scope="module")
def openvino_venv() -> Path:
    return agentenv.agent_venv_or_skip("openvino")


@pytest.fixture(scope="module")
def gpu_venv() -> Path:
    return agentenv.agent_venv_or_skip("gpu")


@dataclass
class Device:
    """A real ``edge-agent`` from a device venv, enrolled, alone in its fleet, and the
    controller's operator API (edgectl) to release to it and list it."""

    agent: AgentProcess
    fleet: str
    cli: Cli
    predict_endpoint: str
    models: list[str] = field(default_factory=list)  # added to the registry for it

    @property
    def device_id(self) -> str:
        return self.agent.device_id

    def listed(self) -> dict[str, Any]:
        """Its row of ``edgectl devices list --json`` ({} before it registered)."""
        rows = self.cli.json("devices", "list", "--fleet", self.fleet)
        return next((d for d in rows if d["device_id"] == self.device_id), {})

    def events(self, kind: str) -> list[dict[str, Any]]:
        found = self.cli.json("events", "--device", self.device_id, "--limit", "200")
        return [e for e in found if e["kind"] == kind]

    def release(self, model: Path, version: str, providers: str) -> str:
        """``edgectl release create --providers``, deployed with ``--wait``; once the device
        runs it, its ``name:version``."""
        name = f"{self.fleet}-digits"
        slow = ("--deadline", str(DEADLINE_S))  # the controller checks models in a sandbox
        if not self.models:
            self.cli.ok(*slow, "model", "add", model, "--name", name, timeout=DEADLINE_S)
            self.models.append(name)
        self.cli.ok(
            *slow, "release", "create", name, "--version", version, "--providers", providers,
            timeout=DEADLINE_S,
        )  # fmt: skip
        ref = f"{name}:{version}"
        done = self.cli.run(
            "deploy", ref, "--fleet", self.fleet, "--wait", "--timeout", str(DEADLINE_S),
            "--json", timeout=DEADLINE_S + 60,
        )  # fmt: skip
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{self.agent.output()[-4000:]}"
        support.eventually(
            lambda: (d := self.listed()).get("active_release") == ref and d["phase"] == "active",
            timeout=DEADLINE_S,
            what=f"{self.device_id} active on {ref}",
        )
        return ref

    def answers_as_the_cpu_does(self, model: bytes, x: np.ndarray) -> None:
        """Its Predict of ``x`` against CPU ONNX Runtime (this process's) on the same model:
        the same labels, probabilities within float tolerance (providers' kernels differ)."""
        reply = predict(self.predict_endpoint, {"pixels": x})
        got = {o.name: wire.array_from_pb(o) for o in reply.outputs}
        session = ort.InferenceSession(model, providers=[CPU])
        label, probabilities = session.run(["label", "probabilities"], {"pixels": x})
        np.testing.assert_array_equal(got["label"], label)
        got_p = np.asarray(got["probabilities"], dtype=np.float32)
        np.testing.assert_allclose(got_p, probabilities, rtol=1e-4, atol=1e-5)


@pytest.fixture
def start_device(
    ctl: support.Running,
    cli: Cli,
    broker: Broker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Any]:
    """``start_device(venv)``: a Device of that venv's agent, once it reported its hardware."""
    monkeypatch.setenv("COLUMNS", "240")  # edgectl's tables, every column whole
    started: list[AgentProcess] = []

    def start(venv: Path) -> Device:
        fleet = support.unique("prov")
        agent = agent_process(ctl, broker, tmp_path, f"{fleet}-dev", fleet)
        agent.args[0:3] = [str(venv / "bin" / "edge-agent")]  # the device venv's, not ours
        started.append(agent)
        info = agent.start()
        device = Device(agent, fleet, cli, str(info["predict_endpoint"]))
        support.eventually(
            lambda: device.listed().get("hardware"), timeout=60, what="its hardware, listed"
        )
        return device

    yield start
    for agent in started:
        agent.kill()


def test_a_release_preferring_openvino_runs_on_it_and_answers_as_the_cpu_does(
    openvino_venv: Path,
    start_device: Any,
    digits_model_path: Path,
    digits_model: digits.TrainedModel,
    digits_data: digits.DigitsData,
) -> None:
    device = start_device(openvino_venv)
    hardware = device.listed()["hardware"]
    assert OV in hardware["providers"] and CPU in hardware["providers"], hardware

    ref = device.release(digits_model_path, "1.0.0", OV_CPU_FP32)
    listed = device.listed()
    assert (listed["active_provider"], listed["provider_fallback"]) == (OV, ""), listed
    device.answers_as_the_cpu_does(digits_model.onnx_bytes, digits_data.x_test)
    assert device.events("activated"), "the activation, among its events"
    assert not device.events("provider_fallback")
    table = device.cli.ok("devices", "list", "--fleet", device.fleet)
    assert short_provider(OV) in table and "(fallback)" not in table, table
    assert ref in table, table


@pytest.mark.skipif(Path("/dev/accel").exists(), reason="this machine has an NPU")
def test_openvino_asked_for_a_missing_npu_falls_back_to_the_cpu_with_an_event(
    openvino_venv: Path,
    start_device: Any,
    digits_model_path: Path,
    digits_model: digits.TrainedModel,
    digits_data: digits.DigitsData,
) -> None:
    """The NPU plugin is in the wheel but finds no NPU: ORT runs the session on the CPU, and
    the agent says so (as onnxruntime-gpu does for CUDA on a machine without a GPU)."""
    device = start_device(openvino_venv)
    ref = device.release(digits_model_path, "1.0.0", OV_NPU)
    why = f"running on {CPU}: {OV} did not initialise (the session runs on {CPU})"
    listed = device.listed()
    assert (listed["active_provider"], listed["provider_fallback"]) == (CPU, why), listed
    [event] = device.events("provider_fallback")
    assert (event["release"], event["message"]) == (ref, why)
    table = device.cli.ok("devices", "list", "--fleet", device.fleet)
    assert "CPU (fallback)" in table, table
    device.answers_as_the_cpu_does(digits_model.onnx_bytes, digits_data.x_test)


@pytest.mark.skipif(Path("/dev/nvidiactl").exists(), reason="this machine has an NVIDIA GPU")
def test_a_gpu_build_without_a_gpu_falls_back_to_the_cpu_with_an_event(
    gpu_venv: Path,
    start_device: Any,
    digits_model_path: Path,
    digits_model: digits.TrainedModel,
    digits_data: digits.DigitsData,
) -> None:
    """onnxruntime-gpu lists TensorRT and CUDA; neither starts here (no GPU, no CUDA
    libraries): a GPU-first release runs on the CPU, each passed over named in the event."""
    device = start_device(gpu_venv)
    hardware = device.listed()["hardware"]
    assert "CUDAExecutionProvider" in hardware["providers"], hardware
    assert hardware["gpus"] == [], hardware

    ref = device.release(digits_model_path, "1.0.0", GPU_FIRST)
    listed = device.listed()
    assert listed["active_provider"] == CPU, listed
    why = listed["provider_fallback"]
    assert why.startswith(f"running on {CPU}: "), listed
    assert f"CUDAExecutionProvider did not initialise (the session runs on {CPU})" in why
    assert "TensorrtExecutionProvider " in why
    [event] = device.events("provider_fallback")
    assert (event["release"], event["message"]) == (ref, why)
    table = device.cli.ok("devices", "list", "--fleet", device.fleet)
    assert "CPU (fallback)" in table, table
    device.answers_as_the_cpu_does(digits_model.onnx_bytes, digits_data.x_test)
