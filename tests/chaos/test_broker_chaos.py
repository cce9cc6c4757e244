"""Chaos with real processes: the broker SIGKILLed and restarted (persistence off, so every
retained message is lost) at random points of rollouts, a device offline across a broker
restart, and a flood of malformed and forged messages on every topic.

``EDGEFLEET_CHAOS_ROLLOUTS`` sets how many broker restarts the first test survives (default 3
here; ``make bench`` runs 20 and writes ``bench/results/chaos.json``).
"""

from __future__ import annotations

import importlib.util
import os
import random
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import mosquitto_available

BENCH = Path(__file__).resolve().parents[2] / "bench"
pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def load(name: str) -> ModuleType:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def chaos() -> ModuleType:
    return load("chaosfleet")


@pytest.fixture(scope="module")
def fleet(chaos: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    if not mosquitto_available():
        pytest.skip("mosquitto is not installed (apt-get install mosquitto; .ci/run does)")
    with chaos.ChaosFleet(
        tmp_path_factory.mktemp("chaos"), devices=6, fleet=f"chaos-{uuid.uuid4().hex[:6]}"
    ) as f:
        yield f


def test_rollouts_succeed_through_broker_restarts(chaos: ModuleType, fleet: object) -> None:
    rng = random.Random(int(os.environ.get("EDGEFLEET_CHAOS_SEED", "1")))
    runs = [
        chaos.rollout_through_a_broker_restart(fleet, rng)
        for _ in range(int(os.environ.get("EDGEFLEET_CHAOS_ROLLOUTS", "3")))
    ]
    failed = [r for r in runs if r.phase != "succeeded" or r.converged_after_broker_s > 30]
    assert not failed, f"rollouts that did not succeed within 30 s of the broker's return: {failed}"


def test_a_device_offline_across_a_broker_restart_converges_when_it_returns(
    chaos: ModuleType, fleet: object
) -> None:
    took = chaos.offline_across_a_broker_restart(fleet)
    assert took <= 30, f"the returning device took {took:.1f}s to converge"


def test_malformed_and_forged_messages_change_nothing(chaos: ModuleType, fleet: object) -> None:
    ids = sorted(fleet.agents)  # type: ignore[attr-defined]
    marker = f"before-{uuid.uuid4().hex[:6]}"
    fleet.neighbours_agree()  # type: ignore[attr-defined]
    fleet.settled(marker, ids[0])  # type: ignore[attr-defined]
    before = fleet.snapshot()  # type: ignore[attr-defined]
    messages = chaos.malformed_messages(fleet, ids, 2000)
    chaos.flood(fleet, messages)
    fleet.settled(f"after-{marker}", ids[0])  # type: ignore[attr-defined]
    after = fleet.snapshot()  # type: ignore[attr-defined]
    changed = {k: (before.get(k), after.get(k)) for k in before.keys() | after.keys()
               if before.get(k) != after.get(k)}  # fmt: skip
    assert not changed, f"{len(messages)} malformed messages changed: {changed}"
