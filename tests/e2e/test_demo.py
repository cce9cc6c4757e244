"""The full ``edgectl demo`` through the real CLI: its six steps happen as narrated, or it fails.

Real broker, controller and agents, started by the demo itself. The first test checks the
story end to end from what the demo prints and writes into its run directory; the second makes
one step go wrong for real (the restarted agent dies as it loads its model) and checks the
demo says so, records it, and exits non-zero.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from edgefleet.demo.processes import child_env
from tests.e2e.conftest import EDGECTL

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STEPS = ["train", "compress", "deploy", "canary", "failover"]


def run_demo(out: Path, *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EDGECTL, "demo", "--out", str(out)],
        capture_output=True, text=True, timeout=280, env=env or child_env(), check=False,
    )  # fmt: skip


def summary_of(out: Path) -> dict[str, Any]:
    summary: dict[str, Any] = json.loads((out / "summary.json").read_text())
    return summary


def test_the_full_demo_shows_every_step_checked(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = run_demo(out)
    shown = f"{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    assert result.returncode == 0, shown
    for n, title in enumerate(["train", "compress", "release and deploy", "a bad release",
                               "SIGKILL", "summary"], start=1):  # fmt: skip
        assert f"{n}/6 {title}" in result.stdout, shown
    assert "winner " in result.stdout  # the compression report names its winner
    assert "failed its gate and the controller rolled digits:1.1.0 back by itself" in result.stdout
    assert ", 0 failed" in result.stdout
    assert "rejoined" in result.stdout
    assert str(out.resolve()) in result.stdout
    assert "demo finished" in result.stdout

    summary = summary_of(out)
    assert summary["ok"] is True and summary["failed"] is None
    assert [s["step"] for s in summary["steps"]] == STEPS
    assert all(s["ok"] for s in summary["steps"])
    facts = summary["facts"]
    assert facts["compress"]["drop"] <= 1.0
    assert set(facts["deploy"]["devices"]) == {"edge-a1", "edge-a2", "edge-a3"}
    canary = facts["canary"]
    assert canary["phase"] != "succeeded"
    assert len(canary["canary"]) == 1
    assert sorted(canary["canary"] + canary["untouched"]) == ["edge-a1", "edge-a2", "edge-a3"]
    failover = facts["failover"]
    assert failover["failed"] == 0
    assert failover["local"] > 0 and failover["neighbour"] > 0
    assert failover["device"] in canary["untouched"]

    events = json.loads((out / "events.json").read_text())
    bad = [e for e in events if e["release"] == "digits:1.1.0"]
    assert bad and {e["device_id"] for e in bad} == set(canary["canary"])
    charts = ["compress.png", "compress.svg", "rollout-canary.png", "rollout-canary.svg"]
    for name in [*charts, "logs/controller.log", "metrics/controller.prom", "metrics/edge-a1.prom"]:
        assert (out / name).is_file(), name
    assert set(summary["artifacts"]) >= {str(out.resolve() / "summary.json")}


def test_a_step_that_does_not_turn_out_as_narrated_fails_the_demo(tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = child_env()
    # agents die as they load their active model at start: only the restarted one ever does
    env["EDGEFLEET_FAILPOINTS"] = "load_active=kill"
    result = run_demo(out, env=env)
    shown = f"{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    assert result.returncode == 1, shown
    assert "demo finished" not in result.stdout
    summary = summary_of(out)
    assert summary["ok"] is False
    assert summary["failed"].startswith("failover: "), summary["failed"]
    assert [s["step"] for s in summary["steps"]] == STEPS
    assert summary["steps"][-1]["ok"] is False
    assert result.stderr.strip().splitlines()[-1].startswith("error: "), shown
    assert (out / "logs").is_dir()
