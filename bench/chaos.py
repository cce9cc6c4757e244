"""Chaos benchmark (``make bench``): rollouts through broker restarts, a device offline across
one, and a flood of malformed messages, on a real fleet (``chaosfleet``: Mosquitto with
persistence off, a real controller, six real agents).

Writes ``bench/results/chaos.json``: ``broker_restarts``, ``rollouts_succeeded``,
``max_converge_after_broker_s``, ``offline_device_converge_s``, ``malformed_sent``,
``state_changes_from_malformed``. Targets: every rollout succeeds, each within 30 s of the
broker's return, and the malformed messages change nothing (goal 0).
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
import chaosfleet  # noqa: E402

RESTARTS = int(os.environ.get("EDGEFLEET_CHAOS_ROLLOUTS", "20"))
CONVERGE_TARGET_S = 30.0


def measure(*, restarts: int = RESTARTS, devices: int = 6, seed: int = 1) -> dict[str, object]:
    rng = random.Random(seed)
    with (
        tempfile.TemporaryDirectory(prefix="ef-chaos-") as tmp,
        chaosfleet.ChaosFleet(Path(tmp), devices=devices) as fleet,
    ):
        runs = []
        for i in range(restarts):
            run = chaosfleet.rollout_through_a_broker_restart(fleet, rng)
            runs.append(run)
            mid = " (mid-rollout)" if run.mid_rollout else ""
            print(
                f"  rollout {i + 1:2d}/{restarts}: {run.release} {run.phase}, broker killed "
                f"{run.outage_at_s:.1f}s in{mid}, done {run.converged_after_broker_s:.1f}s "
                "after it came back",
                flush=True,
            )
        offline_s = chaosfleet.offline_across_a_broker_restart(fleet)
        ids = sorted(fleet.agents)
        fleet.neighbours_agree()
        fleet.settled(f"before-{time.time_ns()}", ids[0])
        before = fleet.snapshot()
        messages = chaosfleet.malformed_messages(fleet, ids, 2000)
        chaosfleet.flood(fleet, messages)
        fleet.settled(f"after-{time.time_ns()}", ids[0])
        after = fleet.snapshot()
    changes = sum(1 for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    return {
        "devices": devices,
        "broker_restarts": restarts,
        "rollouts_succeeded": sum(1 for r in runs if r.phase == "succeeded"),
        "restarts_mid_rollout": sum(1 for r in runs if r.mid_rollout),
        "max_converge_after_broker_s": round(max(r.converged_after_broker_s for r in runs), 2),
        "offline_device_converge_s": round(offline_s, 2),
        "malformed_sent": len(messages),
        "state_changes_from_malformed": changes,
    }


def main() -> bool:
    record = measure()
    held = (
        record["rollouts_succeeded"] == record["broker_restarts"]
        and float(record["max_converge_after_broker_s"]) <= CONVERGE_TARGET_S  # type: ignore[arg-type]
        and record["state_changes_from_malformed"] == 0
    )
    record["target_held"] = held
    out = HERE / "results" / "chaos.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    width = max(len(k) for k in record)
    for key, value in record.items():
        print(f"  {key:<{width}}  {value}")
    print(f"chaos: {'PASS' if held else 'FAIL'} (written to {out})")
    return held


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
