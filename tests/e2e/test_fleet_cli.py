"""The whole system through its operator CLI: real broker, controller, agents; edgectl subprocesses.

Registers two versions of the digits model, releases 1.0.0 and 1.1.0, deploys each to a fleet
of three agents with ``deploy --wait``, and checks with ``devices list --json`` and
``edgectl predict`` that every device runs the right model and answers correctly (``--endpoint``
its local Predict: the endpoint an enrolled device lists is its mTLS peer listener, for its
fleet's neighbours only).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edgefleet.demo import digits
from edgefleet.demo.processes import child_env
from tests.e2e.conftest import EDGECTL, Fleet

pytestmark = pytest.mark.e2e


def expected_labels(model: digits.TrainedModel, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.onnx_bytes, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["label"], {"pixels": x})[0])


def roll_out(fleet: Fleet, model: digits.TrainedModel, version: str, tmp_path: Path) -> None:
    path = tmp_path / f"digits-{version}.onnx"
    path.write_bytes(model.onnx_bytes)
    fleet.cli.ok("model", "add", path, "--name", "digits", "--description", f"v{version}")
    fleet.cli.ok("release", "create", "digits", "--version", version)
    result = fleet.cli.run("deploy", f"digits:{version}", "--fleet", fleet.name, "--wait",
                           "--timeout", "60", "--json")  # fmt: skip
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{fleet.logs()}"
    summary = json.loads(result.stdout)
    assert summary["ok"] is True and summary["timed_out"] is False
    assert sorted(t["device_id"] for t in summary["targets"]) == fleet.device_ids


def check_fleet(
    fleet: Fleet, model: digits.TrainedModel, version: str, data: digits.DigitsData, tmp_path: Path
) -> None:
    devices = fleet.devices()
    assert sorted(d["device_id"] for d in devices) == fleet.device_ids
    for d in devices:
        assert d["phase"] == "active", d
        assert d["active_release"] == f"digits:{version}", d
        assert d["generation_applied"] == d["generation_desired"] > 0, d
        assert d["online"] and d["predict_endpoint"], d
    npz = tmp_path / "test-digits.npz"
    np.savez(npz, pixels=data.x_test)
    want = expected_labels(model, data.x_test)
    for device_id in fleet.device_ids:
        local = fleet.local_predict(device_id)
        out = json.loads(
            fleet.cli.ok("predict", "--device", device_id, "--input", npz, "--output-json",
                         "--endpoint", local)
        )  # fmt: skip
        assert out["release"] == f"digits:{version}"
        labels = np.asarray(out["outputs"]["label"]["data"])
        assert out["outputs"]["probabilities"]["shape"] == [len(data.x_test), 10]
        np.testing.assert_array_equal(labels, want)
        accuracy = float(np.mean(labels == data.y_test))
        assert abs(accuracy - model.accuracy) <= 1 / len(data.y_test) + 1e-9


def test_two_releases_roll_out_and_serve_through_the_cli(
    fleet: Fleet,
    digits_data: digits.DigitsData,
    digits_model: digits.TrainedModel,
    digits_model_v2: digits.TrainedModel,
    tmp_path: Path,
) -> None:
    roll_out(fleet, digits_model, "1.0.0", tmp_path)
    check_fleet(fleet, digits_model, "1.0.0", digits_data, tmp_path)
    roll_out(fleet, digits_model_v2, "1.1.0", tmp_path)
    check_fleet(fleet, digits_model_v2, "1.1.0", digits_data, tmp_path)
    models = fleet.cli.json("model", "list", "--name", "digits")
    assert [m["version"] for m in models] == [1, 2]
    events = fleet.cli.json("events", "--fleet", fleet.name, "--limit", "200")
    assert {e["device_id"] for e in events} == set(fleet.device_ids)


def test_predict_with_a_wrong_input_is_one_line(fleet: Fleet, tmp_path: Path) -> None:
    npz = tmp_path / "wrong.npz"
    np.savez(npz, pixels=np.zeros((1, 65), np.float32))
    devices = fleet.devices()
    if not any(d["phase"] == "active" for d in devices):
        pytest.fail("no device serves a model; run with the rollout test")
    device_id = fleet.device_ids[0]
    result = fleet.cli.run("predict", "--device", device_id, "--input", npz,
                           "--endpoint", fleet.local_predict(device_id))  # fmt: skip
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "pixels" in lines[0], (
        result.stderr
    )


def test_a_release_that_fails_its_health_check_is_reported(
    fleet: Fleet, digits_model: digits.TrainedModel, tmp_path: Path
) -> None:
    before = {d["device_id"]: d["active_release"] for d in fleet.devices()}
    path = tmp_path / "slow.onnx"
    path.write_bytes(digits_model.onnx_bytes)
    fleet.cli.ok("model", "add", path, "--name", "digits")
    # no model answers within a nanosecond: every device must refuse the release
    fleet.cli.ok(
        "release", "create", "digits", "--version", "9.0.0", "--latency-budget-ms", "0.000001"
    )
    result = fleet.cli.run("deploy", "digits:9.0.0", "--fleet", fleet.name, "--timeout", "60")
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    # the rollout rolls back at the first failures it sees: under load the last device may
    # still be checking the release then, so "2 of 3" is as right as "3 of 3"
    refused = r"error: digits:9\.0\.0: [1-3] of 3 device\(s\) failed; rollout \S+ rolled_back"
    assert re.match(refused, lines[-1]), result.stderr
    after = {d["device_id"]: d["active_release"] for d in fleet.devices()}
    assert after == before  # each kept its last good release


@pytest.mark.slow
def test_quick_demo_runs_to_completion() -> None:
    result = subprocess.run([*EDGECTL, "demo", "--quick"], capture_output=True, text=True,
                            timeout=180, env=child_env(), check=False)  # fmt: skip
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    assert "demo finished" in result.stdout
    assert "digits:1.1.0" in result.stdout
