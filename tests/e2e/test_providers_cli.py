"""Execution providers end to end: a release preferring TensorRT and CUDA, on agents whose ONNX
Runtime has neither, serves on the CPU; ``devices list`` and ``events`` say so.

Real broker, controller and ``edge-agent`` processes; every operation through ``edgectl``.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import onnxruntime as ort
import pytest

from edgefleet.demo import digits
from tests.e2e.conftest import Fleet

pytestmark = pytest.mark.e2e


def test_a_gpu_preference_falls_back_to_the_cpu_visibly(
    fleet: Fleet, digits_model: digits.TrainedModel, tmp_path: Path
) -> None:
    if {"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(ort.get_available_providers()):
        pytest.skip("this ONNX Runtime offers a GPU provider")
    path = tmp_path / "digits.onnx"
    path.write_bytes(digits_model.onnx_bytes)
    fleet.cli.ok("model", "add", path, "--name", "digits")
    fleet.cli.ok(
        "release", "create", "digits", "--version", "5.0.0",
        "--providers", "tensorrt:trt_fp16_enable=1,cuda,cpu",
    )  # fmt: skip
    result = fleet.cli.run("deploy", "digits:5.0.0", "--fleet", fleet.name, "--wait",
                           "--timeout", "60", "--json")  # fmt: skip
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{fleet.logs()}"
    assert json.loads(result.stdout)["ok"] is True

    for d in fleet.devices():
        assert d["active_release"] == "digits:5.0.0", d
        assert d["active_provider"] == "CPUExecutionProvider", d
        assert "TensorrtExecutionProvider" in d["provider_fallback"], d
        assert "CUDAExecutionProvider" in d["provider_fallback"], d
        hw = d["hardware"]
        assert hw["arch"] == platform.machine() and hw["cores"] > 0, d
        assert "CPUExecutionProvider" in hw["providers"], d
    events = fleet.cli.json("events", "--fleet", fleet.name, "--limit", "200")
    fell_back = {
        e["device_id"]
        for e in events
        if e["kind"] == "provider_fallback" and e["release"] == "digits:5.0.0"
    }
    assert fell_back == set(fleet.device_ids)
