"""The full ``edgectl demo`` through the real CLI: its six steps happen as narrated, or it fails.

Real broker, controller and agents, started by the demo itself. The first test checks the
story end to end from what the demo prints and writes into its run directory, with in-process
releases (``--runtime process``); the second the same story with container releases
(``--runtime container``: the local dockerd, the demo's own registry; skipped, saying why,
where Docker, the runtime image or docker-registry is missing) and that no container or image
of its devices is left after it; the third makes one step go wrong for real (the restarted
agent dies as it loads its model) and checks the demo says so, records it, and exits non-zero.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from edgefleet.demo import containers
from edgefleet.demo.fleet import device_ids
from edgefleet.demo.processes import child_env
from tests.e2e.conftest import EDGECTL

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STEPS = ["train", "compress", "deploy", "canary", "failover"]


def run_demo(
    out: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EDGECTL, "demo", "--out", str(out), *(args or ("--runtime", "process"))],
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
    assert facts["runtime"] == "process"
    assert "runtime: process (asked for with --runtime process)" in result.stdout


def test_the_full_demo_with_container_releases_leaves_no_container(tmp_path: Path) -> None:
    why_not = containers.missing()
    if why_not:
        pytest.skip(f"container releases cannot run here: {why_not}")
    import docker

    fleet = f"demo-c{uuid.uuid4().hex[:6]}"  # its devices (and their containers' labels) unique
    ids = device_ids(fleet, 3)
    out = tmp_path / "run"
    result = run_demo(out, "--runtime", "container", "--fleet", fleet)
    shown = f"{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    client = docker.from_env(timeout=60)
    try:
        left = [c.name for c in containers.leftovers(client, ids)]
        images = [t for d in ids for i in client.images.list(name=f"edgefleet-agent/{d}")
                  for t in i.tags]  # fmt: skip
    finally:
        containers.cleanup(ids, ["digits:1.0.0", "digits:1.1.0"])  # a failed run's, if any
        client.close()
    assert result.returncode == 0, shown
    assert "runtime: container (asked for with --runtime container)" in result.stdout
    assert "what the demo showed (runtime: container)" in result.stdout
    assert "failed its gate and the controller rolled digits:1.1.0 back by itself" in result.stdout
    assert ", 0 failed" in result.stdout and "rejoined" in result.stdout
    summary = summary_of(out)
    assert summary["ok"] is True, summary["failed"]
    assert [s["step"] for s in summary["steps"]] == STEPS
    facts = summary["facts"]
    assert facts["runtime"] == "container"
    assert set(facts["deploy"]["devices"]) == set(ids)
    assert facts["failover"]["failed"] == 0
    agent_log = (out / "logs" / f"{ids[0]}.log").read_text()
    assert "serves digits:1.0.0" in agent_log  # from its container (agent/containers.py)
    assert left == [] and images == [], (left, images)


def test_a_step_that_does_not_turn_out_as_narrated_fails_the_demo(tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = child_env()
    # agents die as they load their active model at start: only the restarted one ever does
    env["EDGEFLEET_FAILPOINTS"] = "load_active=kill"
    result = run_demo(out, "--runtime", "process", env=env)
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
