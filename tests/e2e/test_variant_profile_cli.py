"""``edgectl release create --variant ... --profile-on DEVICE`` end to end: the controller
times the default model and each fitting variant on one device through its agent, signs the
fastest for that device's hardware class, and every device of the class (all three here, on
this machine) runs it after the rollout.

Real broker, controller and ``edge-agent`` processes; every operation through ``edgectl``;
models made here with ``onnx.helper``. Which candidate is fastest is not asserted (timing):
only that the signed choice is the fastest of the figures it was made from, and that the
devices run it.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pytest

from tests import tinymodels
from tests.e2e.conftest import Fleet

pytestmark = pytest.mark.e2e


def _model(path: Path, *, depth: int, tag: str) -> Path:
    """x[N,16] -> y[N,16] through ``depth`` MatMuls by I (other ``tag``: other bytes)."""
    path.write_bytes(tinymodels.matmul_chain(16, depth=depth, tag=tag))
    return path


def test_the_variant_measured_fastest_on_a_device_runs_on_its_class(
    fleet: Fleet, tmp_path: Path
) -> None:
    arch = platform.machine()
    cli = fleet.cli
    cli.ok("model", "add", _model(tmp_path / "d.onnx", depth=1, tag="default"), "--name", "pdig")
    cli.ok("model", "add", _model(tmp_path / "s.onnx", depth=1, tag="same"), "--name", "pdig-s")
    cli.ok("model", "add", _model(tmp_path / "x.onnx", depth=8, tag="deep"), "--name", "pdig-x")
    profiled = fleet.device_ids[0]
    created = cli.json(
        "release", "create", "pdig", "--version", "1.0.0",
        "--variant", f"same=pdig-s@arch:{arch}",
        "--variant", f"deep=pdig-x@arch:{arch}",
        "--profile-on", profiled,
    )  # fmt: skip
    (pref,) = created["preferences"]
    assert pref["arch"] == arch and pref["holds"] == [f"arch:{arch}"]
    assert pref["measured_on"] == profiled
    timings = {x["variant"]: x["p50_ms"] for x in pref["timings"]}
    assert set(timings) == {None, "same", "deep"} and all(p > 0 for p in timings.values())
    assert pref["variant"] == min(timings, key=lambda n: timings[n])

    result = cli.run("deploy", "pdig:1.0.0", "--fleet", fleet.name, "--wait",
                     "--timeout", "60", "--json")  # fmt: skip
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{fleet.logs()}"
    assert json.loads(result.stdout)["ok"] is True
    for d in fleet.devices():  # the same machine: the same class as the profiled device
        assert d["active_release"] == "pdig:1.0.0", d
        assert d["active_variant"] == (pref["variant"] or ""), d

    human = cli.ok(
        "release", "create", "pdig", "--version", "1.0.1",
        "--variant", f"same=pdig-s@arch:{arch}", "--profile-on", profiled,
    )  # fmt: skip
    assert f"measured on {profiled}" in human and f"on {arch} + arch:{arch}" in human

    refused = cli.run("release", "create", "pdig", "--version", "1.0.2", "--profile-on", profiled)
    assert refused.returncode != 0 and "give --variant" in refused.stderr
