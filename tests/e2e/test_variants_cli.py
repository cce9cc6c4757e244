"""Model variants end to end: a release with a variant no CPU-only device can run (TensorRT) and
one every device here fits (its own architecture); each agent runs the one that fits and
``devices list`` says so.

Real broker, controller and ``edge-agent`` processes; every operation through ``edgectl``.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest

from edgefleet.demo import digits
from tests.e2e.conftest import Fleet

pytestmark = pytest.mark.e2e


def test_each_device_runs_the_variant_that_fits_it(
    fleet: Fleet, digits_model: digits.TrainedModel, tmp_path: Path
) -> None:
    if "TensorrtExecutionProvider" in ort.get_available_providers():
        pytest.skip("this ONNX Runtime offers TensorRT")
    paths = {}
    for tag in ("default", "trt", "native"):
        proto = onnx.load_from_string(digits_model.onnx_bytes)
        proto.doc_string = f"digits {tag}"  # other bytes, the same graph
        paths[tag] = tmp_path / f"{tag}.onnx"
        onnx.save(proto, paths[tag])
    fleet.cli.ok("model", "add", paths["default"], "--name", "vdigits")
    fleet.cli.ok("model", "add", paths["trt"], "--name", "vdigits-trt")
    fleet.cli.ok("model", "add", paths["native"], "--name", "vdigits-native")
    created = fleet.cli.json(
        "release", "create", "vdigits", "--version", "1.0.0",
        "--variant", "trt=vdigits-trt@gpu+provider:TensorrtExecutionProvider/tensorrt,cpu",
        "--variant", f"native=vdigits-native@arch:{platform.machine()}",
        "--json",
    )  # fmt: skip
    assert [v["name"] for v in created["variants"]] == ["trt", "native"]
    result = fleet.cli.run("deploy", "vdigits:1.0.0", "--fleet", fleet.name, "--wait",
                           "--timeout", "60", "--json")  # fmt: skip
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{fleet.logs()}"
    assert json.loads(result.stdout)["ok"] is True

    for d in fleet.devices():
        assert d["active_release"] == "vdigits:1.0.0", d
        assert d["active_variant"] == "native", d
        assert d["active_provider"] == "CPUExecutionProvider", d
