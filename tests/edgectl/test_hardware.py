"""``edgectl devices list``: each device's hardware and the execution provider it runs on, and
``edgectl release create --providers``.

A device (a plain MQTT client, enrolled: what matters is the status it sends) reports its
hardware and that its active release fell back to the CPU; a real controller stores it;
``--json`` returns every field, the table shows HW and "CPU (fallback)", ``--hardware`` the
detail and why.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edgefleet.common import types as t
from edgefleet.demo.stack import Controller
from edgefleet.edgectl import output
from tests.controller import support
from tests.edgectl.conftest import ConnectDevice, Edgectl, one_error_line

ORIN = t.Hardware(
    arch="aarch64",
    cpu_features=("neon", "dotprod", "fp16"),
    cores=6,
    memory_bytes=8 << 30,
    gpus=(t.Gpu("Orin (nvgpu)"),),
    providers=("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
    board="NVIDIA Jetson Orin Nano Developer Kit",
    onnxruntime_version="1.18.0",
)
WHY = "running on CPUExecutionProvider: CUDAExecutionProvider did not initialise"


def _listed(edgectl: Edgectl, fleet: str) -> list[dict[str, Any]]:
    result = edgectl("devices", "list", "--fleet", fleet, "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    return list(json.loads(result.stdout))


def test_devices_list_shows_hardware_and_a_provider_fallback(
    controller: Controller,
    edgectl: Edgectl,
    enrolled_device: ConnectDevice,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(output.console, "_width", 240)  # a wide terminal: every column shows
    fleet, dev = support.unique("fleet"), support.unique("dev")
    device = enrolled_device(fleet, dev)
    device.status(
        dev,
        fleet,
        phase=t.InstallPhase.ACTIVE,
        active_release="digits:1.0.0",
        hardware=ORIN,
        active_provider="CPUExecutionProvider",
        provider_fallback=WHY,
        seq=1,
    )
    [listed] = support.eventually(
        lambda: [d for d in _listed(edgectl, fleet) if d["hardware"]], what="the hardware"
    )
    assert listed["hardware"] == {
        "arch": "aarch64",
        "cpu_features": ["neon", "dotprod", "fp16"],
        "cores": 6,
        "memory_bytes": 8 << 30,
        "gpus": [{"name": "Orin (nvgpu)", "memory_bytes": 0}],
        "providers": list(ORIN.providers),
        "board": ORIN.board,
        "onnxruntime_version": "1.18.0",
    }
    assert (listed["active_provider"], listed["provider_fallback"]) == (
        "CPUExecutionProvider",
        WHY,
    )

    table = edgectl("devices", "list", "--fleet", fleet)
    assert table.exit_code == 0, table.stdout + table.stderr
    assert "aarch64 6c 8G dotprod 1 GPU" in table.stdout and "CPU (fallback)" in table.stdout
    detail = edgectl("devices", "list", "--fleet", fleet, "--hardware")
    assert detail.exit_code == 0, detail.stdout + detail.stderr
    flat = " ".join(detail.stdout.split())
    for text in ("aarch64", "dotprod", "Orin (nvgpu)", "1.18.0", "did not", "initialise"):
        assert text in flat, flat

    # the same device back on its first preference: no fallback; the hardware stays
    device.status(
        dev,
        fleet,
        phase=t.InstallPhase.ACTIVE,
        active_release="digits:1.1.0",
        hardware=ORIN,
        active_provider="TensorrtExecutionProvider",
        seq=2,
    )
    [back] = support.eventually(
        lambda: [d for d in _listed(edgectl, fleet) if d["active_release"] == "digits:1.1.0"],
        what="the next status",
    )
    assert (back["active_provider"], back["provider_fallback"]) == (
        "TensorrtExecutionProvider",
        "",
    )
    assert back["hardware"]["arch"] == "aarch64"


def test_release_create_with_providers(edgectl: Edgectl, digits_model_path: Path) -> None:
    assert edgectl("keys", "init").exit_code == 0
    name = support.unique("digits")
    assert edgectl("model", "add", digits_model_path, "--name", name).exit_code == 0
    created = edgectl(
        "release",
        "create",
        name,
        "--version",
        "1.0.0",
        "--providers",
        "TensorrtExecutionProvider:trt_fp16_enable=1,cuda,CPUExecutionProvider",
        "--json",
    )
    assert created.exit_code == 0, created.stdout + created.stderr
    assert json.loads(created.stdout)["providers"] == [
        {"name": "TensorrtExecutionProvider", "options": {"trt_fp16_enable": "1"}},
        {"name": "CUDAExecutionProvider", "options": {}},
        {"name": "CPUExecutionProvider", "options": {}},
    ]
    human = edgectl("release", "create", name, "--version", "1.0.1", "--providers", "openvino")
    assert human.exit_code == 0 and "OpenVINOExecutionProvider" in human.stdout

    bad = one_error_line(
        edgectl("release", "create", name, "--version", "1.0.2", "--providers", "cuda:fp16")
    )
    assert "KEY=VALUE" in bad
    twice = one_error_line(
        edgectl("release", "create", name, "--version", "1.0.3", "--providers", "cuda,cuda")
    )
    assert "named twice" in twice
