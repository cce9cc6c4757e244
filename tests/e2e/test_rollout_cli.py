"""A canary that fails its health check, end to end through the CLI: real broker, controller and
three ``edge-agent`` processes; ``edgectl`` in subprocesses.

Deploys digits:1.0.0 to the fleet, then a release whose latency budget no model can meet with
``--strategy canary --canary 1``: ``deploy`` exits 1 with the reason, the rollout ends
``rolled_back``, only the canary ever saw the bad release, and every device still serves
1.0.0 through ``edgectl predict``. ``rollout status`` and ``events`` explain the rollback in
one line (the canary, the latency gate, the median against the budget), and ``rollout status
--plot`` draws its history.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from edgefleet.demo import digits
from tests.e2e.conftest import Fleet
from tests.e2e.test_fleet_cli import check_fleet, roll_out

pytestmark = pytest.mark.e2e

GOOD, BAD = "digits:1.0.0", "digits:1.1.0"


def test_a_failing_canary_rolls_back_and_the_rest_of_the_fleet_never_sees_it(
    fleet: Fleet,
    digits_data: digits.DigitsData,
    digits_model: digits.TrainedModel,
    tmp_path: Path,
) -> None:
    roll_out(fleet, digits_model, "1.0.0", tmp_path)
    before = {d["device_id"]: d for d in fleet.devices()}
    path = tmp_path / "too-slow.onnx"
    path.write_bytes(digits_model.onnx_bytes)
    fleet.cli.ok("model", "add", path, "--name", "digits")
    # no model answers within a nanosecond: the canary's health check must fail
    fleet.cli.ok(
        "release", "create", "digits", "--version", "1.1.0", "--latency-budget-ms", "0.000001"
    )

    result = fleet.cli.run(
        "deploy", BAD, "--fleet", fleet.name, "--strategy", "canary", "--canary", "1",
        "--timeout", "90",
    )  # fmt: skip

    assert result.returncode == 1, f"{result.stdout}\n{result.stderr}\n{fleet.logs()}"
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {BAD}: 1 of 3 device(s) failed; rollout ro-"), result.stderr
    assert "rolled_back" in last
    canary, *rest = sorted(fleet.device_ids)

    (rollout, first) = fleet.cli.json("rollout", "list", "--fleet", fleet.name)
    assert (rollout["release"], rollout["kind"], rollout["phase"]) == (BAD, "canary", "rolled_back")
    assert first["release"] == GOOD and first["phase"] == "succeeded"
    states = {d["device_id"]: d["state"] for d in rollout["devices"]}
    assert states == {canary: "reverted", rest[0]: "waiting", rest[1]: "waiting"}
    status = fleet.cli.json("rollout", "status", rollout["rollout_id"])
    assert status["phase"] == "rolled_back" and status["reason"]
    # one line says who failed which gate, with the figure and the threshold
    why = re.compile(
        rf"canary {canary} failed the latency gate on the device: median latency "
        r"[0-9.]+ ms \(p95 [0-9.]+ ms, \d+ runs\) is over the budget of 1e-06 ms"
    )
    assert why.match(status["reason"]), status["reason"]
    human = " ".join(fleet.cli.ok("rollout", "status", rollout["rollout_id"]).split())
    assert re.search("why it rolled back: " + why.pattern, human), human
    listed = " ".join(fleet.cli.ok("events", "--fleet", fleet.name, "--limit", "1000").split())
    assert re.search("rollback: " + why.pattern, listed), listed
    kinds = [(h["kind"], h["device_id"], h["new"]) for h in status["history"]]
    assert ("gate", canary, "failed") in kinds and kinds[-1] == ("phase", "", "rolled_back")
    assert not {d for _, d, _ in kinds} - {"", canary}, "no other device in the history"
    plotted = fleet.cli.ok("rollout", "status", rollout["rollout_id"], "--plot", tmp_path / "t.png")
    assert f"timeline: {tmp_path / 't.png'}, {tmp_path / 't.svg'}" in plotted
    assert (tmp_path / "t.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert ET.parse(tmp_path / "t.svg").getroot().tag.endswith("svg")

    events = fleet.cli.json("events", "--fleet", fleet.name, "--limit", "1000")
    saw_bad = {e["device_id"] for e in events if e["release"] == BAD}
    assert saw_bad == {canary}, "only the canary ever saw the bad release"

    after = {d["device_id"]: d for d in fleet.devices()}
    for device_id in rest:
        assert after[device_id]["active_release"] == GOOD
        assert after[device_id]["generation_applied"] == before[device_id]["generation_applied"]
        assert after[device_id]["generation_desired"] == before[device_id]["generation_desired"]
    assert after[canary]["active_release"] == GOOD
    assert after[canary]["generation_applied"] > before[canary]["generation_applied"] + 1, (
        "the bad release and the rollback each took a generation"
    )
    check_fleet(fleet, digits_model, "1.0.0", digits_data, tmp_path)  # predict on each device
