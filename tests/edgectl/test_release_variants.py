"""``edgectl release create --variant``: model variants for hardware classes, parsed and shown."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from edgefleet.common import types as t
from edgefleet.edgectl import output
from tests.controller import support
from tests.edgectl.conftest import ConnectDevice, Edgectl, one_error_line


def test_devices_list_shows_the_variant_a_device_runs(
    edgectl: Edgectl, enrolled_device: ConnectDevice, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(output.console, "_width", 240)  # a wide terminal: every column shows
    fleet, dev = support.unique("fleet"), support.unique("dev")
    device = enrolled_device(fleet, dev)
    device.status(
        dev,
        fleet,
        phase=t.InstallPhase.ACTIVE,
        active_release="digits:1.0.0",
        active_provider="CPUExecutionProvider",
        active_variant="int8-vnni",
        seq=1,
    )

    def listed() -> list[dict[str, object]]:
        result = edgectl("devices", "list", "--fleet", fleet, "--json")
        assert result.exit_code == 0, result.stdout + result.stderr
        return [d for d in json.loads(result.stdout) if d["active_variant"]]

    [d] = support.eventually(listed, what="the variant")
    assert d["active_variant"] == "int8-vnni"
    table = edgectl("devices", "list", "--fleet", fleet)
    assert table.exit_code == 0 and "int8-vnni on CPU" in table.stdout, table.stdout


def test_release_create_with_variants(
    edgectl: Edgectl, digits_model_path: Path, tmp_path: Path
) -> None:
    assert edgectl("keys", "init").exit_code == 0
    name = support.unique("digits")
    assert edgectl("model", "add", digits_model_path, "--name", name).exit_code == 0
    other = onnx.load(digits_model_path)
    other.doc_string = "fp16 build"
    fp16_path = tmp_path / "fp16.onnx"
    onnx.save(other, fp16_path)
    assert edgectl("model", "add", fp16_path, "--name", f"{name}-fp16").exit_code == 0

    created = edgectl(
        "release",
        "create",
        name,
        "--version",
        "1.0.0",
        "--variant",
        f"fp16={name}-fp16:1@gpu+provider:CUDAExecutionProvider/cuda,cpu",
        "--variant",
        f"same={name}@arch:aarch64+cpu:dotprod",
        "--json",
    )
    assert created.exit_code == 0, created.stdout + created.stderr
    variants = json.loads(created.stdout)["variants"]
    assert [(v["name"], v["requires"]) for v in variants] == [
        ("fp16", ["gpu", "provider:CUDAExecutionProvider"]),
        ("same", ["arch:aarch64", "cpu:dotprod"]),
    ]
    assert variants[0]["model_digest"] != variants[1]["model_digest"]

    human = edgectl(
        "release", "create", name, "--version", "1.0.1", "--variant", f"v={name}@cpu:vnni"
    )
    assert human.exit_code == 0, human.stdout + human.stderr
    assert "variant v: sha256:" in human.stdout and "for cpu:vnni" in human.stdout

    bad = one_error_line(
        edgectl("release", "create", name, "--version", "1.0.2", "--variant", "nomodel@gpu")
    )
    assert "NAME=MODEL" in bad
    unknown = one_error_line(
        edgectl("release", "create", name, "--version", "1.0.3", "--variant", f"v={name}@tpu")
    )
    assert "unknown requirement 'tpu'" in unknown
