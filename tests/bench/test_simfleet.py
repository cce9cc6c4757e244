"""The rollout benchmark's simulated fleet, run small: a real broker, the real controller
process, five simulated agents in two simulator processes, one rollout to ``succeeded``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import mosquitto_available

BENCH = Path(__file__).resolve().parents[2] / "bench"


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
def rollout() -> ModuleType:
    return load("rollout")


def test_five_simulated_devices_reach_succeeded(rollout: ModuleType, tmp_path: Path) -> None:
    if not mosquitto_available():
        pytest.skip("mosquitto is not installed (apt-get install mosquitto; .ci/run does)")
    record = rollout.measure(5, workdir=tmp_path, tick_s=0.05, timeout_s=30, sim_procs=2)
    assert record["succeeded"], record
    assert record["devices"] == 5
    assert record["simulator_processes"] == 2  # the devices spread over two processes
    assert record["devices_activated"] == 5
    assert record["devices_active_per_controller"] == 5
    assert record["desired_rejected"] == 0
    assert record["disconnects"] == 0
    assert record["seconds"] > 0
    assert record["controller_cpu_s"] >= 0
    assert "errors" not in record


def test_verdicts(rollout: ModuleType) -> None:
    def rec(n: int, seconds: float, cpu: float, ok: bool = True) -> dict[str, object]:
        return {"devices": n, "seconds": seconds, "controller_cpu_s": cpu, "succeeded": ok,
                "phase": "succeeded" if ok else "rolled_back"}  # fmt: skip

    good = rollout.verdicts([rec(100, 2, 1.0), rec(1000, 20, 11.0)])
    assert [v[3] for v in good] == [True, True, True, True]
    slow = rollout.verdicts([rec(100, 2, 1.0), rec(1000, 61, 20.0)])
    assert [v[3] for v in slow[:2]] == [False, False]
    small = rollout.verdicts([rec(10, 1, 0.1)])
    assert [v[3] for v in small] == [None, None, True]
    # Past 1,000 devices the CPU per device is held against 1,000's too.
    big = rollout.verdicts([rec(100, 2, 1.0), rec(1000, 20, 5.0), rec(10000, 90, 70.0)])
    assert big[2][0] == "controller CPU/device at 10,000 vs 1,000" and big[2][3] is True
    grew = rollout.verdicts([rec(100, 2, 1.0), rec(1000, 20, 5.0), rec(10000, 90, 80.0)])
    assert grew[2][3] is False  # 1.6x
