"""edgectl's rollout commands against a real controller, with simulated agents on the broker
(each enrolled, on mTLS as its identity): deploy with a strategy (followed to succeeded or
rolled_back), rollout list/status/pause/resume/abort, rollback, and strategy errors that stop
before anything is sent."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from edgefleet.common import types as t
from edgefleet.common.signing import TrustStore, load_public_keys
from edgefleet.edgectl.app import app
from edgefleet.edgectl.client import ControllerClient
from tests.conftest import free_port
from tests.controller.support import Outcome, SimAgent, eventually, works
from tests.edgectl.conftest import Edgectl, Enroll, one_error_line


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Setup:
    """A model with releases 1.0.0 and 1.1.0 of its own, and fleets of simulated agents."""

    def __init__(self, edgectl: Edgectl, broker_url: str, enroll: Enroll, model: Path) -> None:
        self.edgectl, self.broker_url, self.enroll = edgectl, broker_url, enroll
        self.name = unique("digits")
        self.old, self.new = f"{self.name}:1.0.0", f"{self.name}:1.1.0"
        self.agents: list[SimAgent] = []
        self.ok("keys", "init")
        self.ok("model", "add", model, "--name", self.name)
        for v in ("1.0.0", "1.1.0"):
            self.ok("release", "create", self.name, "--version", v)
        with self.client() as c:
            pems = [k.public_key_pem.encode() for k in c.list_keys()]
        self.trust = TrustStore(k for pem in pems for k in load_public_keys(pem))

    def client(self) -> ControllerClient:
        return self.edgectl.client()

    def ok(self, *args: str | Path) -> str:
        result = self.edgectl(*args)
        assert result.exit_code == 0, (args, result.stdout, result.stderr)
        return result.stdout

    def fleet(
        self, n: int, *, behaviour: Callable[[str], Outcome] = works
    ) -> tuple[str, list[SimAgent]]:
        fleet = unique("fleet")
        ids = [f"{fleet}-d{i}" for i in range(n)]
        made = [
            SimAgent(self.broker_url, d, fleet, self.trust, active=self.old, behaviour=behaviour,
                     identity=identity)
            for d, identity in zip(ids, self.enroll(fleet, *ids), strict=True)
        ]  # fmt: skip
        for a in made:
            self.agents.append(a.connect())
        with self.client() as c:
            eventually(lambda: len(c.list_devices(fleet)) == n, what=f"{n} devices of {fleet}")
        return fleet, made

    def close(self) -> None:
        for a in self.agents:
            a.close()


@pytest.fixture
def setup(
    edgectl: Edgectl, broker_url: str, enroll: Enroll, digits_model_path: Path
) -> Iterator[Setup]:
    s = Setup(edgectl, broker_url, enroll, digits_model_path)
    yield s
    s.close()


def as_json(result: Any) -> Any:
    return json.loads(result.stdout)


def test_rollout_commands_are_in_the_help() -> None:
    top = CliRunner().invoke(app, ["--help"])
    assert "  rollout " in top.stdout and "  rollback " in top.stdout
    group = CliRunner().invoke(app, ["rollout", "--help"])
    for sub in ("list", "status", "pause", "resume", "abort"):
        assert f"  {sub} " in group.stdout
    deploy = CliRunner().invoke(app, ["deploy", "--help"])
    for option in ("--strategy", "--canary", "--waves", "--max-failures", "--bake"):
        assert option in deploy.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--strategy", "blue-green"], "error: --strategy must be one of all-at-once, canary"),
        (["--strategy", "canary", "--canary", "ten"], "error: --canary: expected a count"),
        (["--strategy", "canary", "--waves", "50%,25%"], "error: --waves are cumulative"),
        (["--strategy", "canary", "--bake", "soon"], "error: --bake: expected a duration"),
        (["--canary", "1"], "error: --canary and --waves need --strategy canary"),
        (["--max-failures", "120%"], "error: --max-failures: '120%' is not between 0% and 100%"),
        (["--max-latency-ratio", "0.5"], "error: --max-latency-ratio must be >= 1.0"),
    ],
)
def test_an_invalid_strategy_is_one_line_and_nothing_is_deployed(
    setup: Setup, args: list[str], message: str
) -> None:
    fleet, (dev,) = setup.fleet(1)

    line = one_error_line(setup.edgectl("deploy", setup.new, "--fleet", fleet, *args))

    assert line.startswith(message), line
    assert json.loads(setup.ok("rollout", "list", "--fleet", fleet, "--json")) == []
    assert dev.generations == []
    # the controller validates (edgectl holds no copy of the rules), except a kind that has no
    # StrategyKind value to send: that one edgectl refuses without calling anyone
    nowhere = CliRunner().invoke(
        app, ["--controller", f"127.0.0.1:{free_port()}", "deploy", "x:1.0.0", "-f", "f", *args]
    )
    local = one_error_line(nowhere)
    if args[:2] == ["--strategy", "blue-green"]:
        assert local.startswith(message), local
    else:
        assert local.startswith("error: cannot reach controller"), local


def test_deploy_follows_a_canary_to_succeeded(setup: Setup) -> None:
    fleet, devs = setup.fleet(3)

    result = setup.edgectl(
        "deploy", setup.new, "--fleet", fleet, "--strategy", "canary", "--canary", "1",
        "--waves", "50%", "--timeout", "60", "--json",
    )  # fmt: skip

    assert result.exit_code == 0, (result.stdout, result.stderr)
    summary = as_json(result)
    assert summary["ok"] is True and summary["phase"] == "succeeded"
    assert [x["device_id"] for x in summary["targets"]] == [devs[0].device_id], "the canary alone"
    assert summary["rollout"]["step_sizes"] == [1, 2, 3]
    assert {d["rollout_state"] for d in summary["devices"]} == {"healthy"}
    assert {d["active_release"] for d in summary["devices"]} == {setup.new}
    assert [a.generations for a in devs] == [[(2, setup.new)]] * 3
    rid = summary["rollout_id"]

    listed = json.loads(setup.ok("rollout", "list", "--fleet", fleet, "--json"))
    assert [(r["rollout_id"], r["phase"], r["kind"]) for r in listed] == [
        (rid, "succeeded", "canary")
    ]
    assert (listed[0]["healthy"], listed[0]["failed"], listed[0]["total"]) == (3, 0, 3)
    wide = {"COLUMNS": "160"}
    argv = ["--controller", setup.edgectl.address, "rollout", "list", "--fleet", fleet]
    table = setup.edgectl.runner.invoke(app, argv, env=wide).stdout
    assert rid in table and "succeeded" in table and "3/0/3" in table
    status = json.loads(setup.ok("rollout", "status", rid, "--json"))
    assert status["phase"] == "succeeded" and status["strategy"]["waves"] == "50%"
    assert set(status["device_reports"]) == {a.device_id for a in devs}
    argv = ["--controller", setup.edgectl.address, "rollout", "status", rid]
    human = setup.edgectl.runner.invoke(app, argv, env=wide).stdout
    assert "succeeded" in human and devs[2].device_id in human
    watched = setup.edgectl("rollout", "status", rid, "--watch")
    assert watched.exit_code == 0, watched.stderr


def test_deploy_follows_a_failing_canary_to_rolled_back(setup: Setup) -> None:
    bad = Outcome(t.InstallPhase.ROLLED_BACK, error="golden output mismatch")
    fleet, devs = setup.fleet(3, behaviour=lambda r: bad if r == setup.new else Outcome())

    result = setup.edgectl(
        "deploy", setup.new, "-f", fleet, "--strategy", "canary", "--canary", "1",
        "--timeout", "60",
    )  # fmt: skip

    assert result.exit_code == 1, (result.stdout, result.stderr)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {setup.new}: 1 of 3 device(s) failed; rollout ro-"), last
    assert "rolled_back" in last and "golden output mismatch" in last
    assert "Traceback" not in result.stdout + result.stderr
    assert devs[0].generations == [(2, setup.new), (3, setup.old)]
    assert [a.generations for a in devs[1:]] == [[], []], "never sent the bad release"
    (listed,) = json.loads(setup.ok("rollout", "list", "--fleet", fleet, "--json"))
    assert listed["phase"] == "rolled_back" and listed["failed"] == 1
    assert [d["state"] for d in listed["devices"]] == ["reverted", "waiting", "waiting"]


def test_pause_resume_abort_and_their_refusals(setup: Setup) -> None:
    fleet, devs = setup.fleet(3, behaviour=lambda r: Outcome(hold=r == setup.new))
    started = setup.edgectl(
        "deploy", setup.new, "-f", fleet, "--strategy", "canary", "--no-wait", "--json"
    )
    assert started.exit_code == 0, started.stderr
    rid = as_json(started)["rollout_id"]
    eventually(lambda: devs[0].held, what="the canary's desired state")

    busy = one_error_line(setup.edgectl("deploy", setup.old, "-f", fleet))
    assert rid in busy

    assert "paused" in setup.ok("rollout", "pause", rid)
    assert json.loads(setup.ok("rollout", "status", rid, "--json"))["phase"] == "paused"
    resumed = json.loads(setup.ok("rollout", "resume", rid, "--json"))
    assert resumed["phase"] == "canary"
    aborted = json.loads(setup.ok("rollout", "abort", rid, "--json"))
    assert aborted["phase"] in ("rolling_back", "rolled_back")

    watched = setup.edgectl("rollout", "status", rid, "--watch", "--json")
    assert watched.exit_code == 1, "a rollout that rolled back is not ok"
    final = as_json(watched)
    assert final["phase"] == "rolled_back" and final["reason"] == "aborted by the operator"
    assert [a.generations for a in devs] == [[(2, setup.new), (3, setup.old)], [], []]
    for verb in ("pause", "resume", "abort"):
        assert "rolled" in one_error_line(setup.edgectl("rollout", verb, rid))
    for verb in ("status", "pause", "resume", "abort"):
        line = one_error_line(setup.edgectl("rollout", verb, "ro-nope"))
        assert line == "error: unknown rollout: ro-nope"


def test_rollback_sends_the_fleet_back(setup: Setup) -> None:
    fleet, devs = setup.fleet(2)
    deployed = setup.edgectl("deploy", setup.new, "-f", fleet, "--timeout", "60")
    assert deployed.exit_code == 0, deployed.stderr
    assert f"{setup.new} is active on all 2 device(s)" in deployed.stdout

    result = setup.edgectl("rollback", "--fleet", fleet, "--timeout", "60", "--json")

    assert result.exit_code == 0, (result.stdout, result.stderr)
    summary = as_json(result)
    assert summary["ok"] is True and summary["rollout"]["kind"] == "rollback"
    assert {d["rollout_state"] for d in summary["devices"]} == {"reverted"}
    assert [a.active for a in devs] == [setup.old, setup.old]
    listed = json.loads(setup.ok("rollout", "list", "--fleet", fleet, "--json"))
    assert [r["kind"] for r in listed] == ["rollback", "all-at-once"]

    to = setup.edgectl("rollback", "-f", fleet, "--to", setup.new, "--timeout", "60")
    assert to.exit_code == 0, to.stderr
    assert [a.active for a in devs] == [setup.new, setup.new]
    bad = one_error_line(setup.edgectl("rollback", "-f", fleet, "--to", "nope"))
    assert "NAME:VERSION" in bad
