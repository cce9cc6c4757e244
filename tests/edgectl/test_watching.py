"""``watching.watch`` with a scripted controller and a fake clock: when it stops, what it says."""

from __future__ import annotations

from typing import Any, cast

from edgefleet.edgectl.client import ControllerClient
from edgefleet.edgectl.convergence import Outcome
from edgefleet.edgectl.watching import watch
from edgefleet.v1 import controller_pb2 as pb
from edgefleet.v1 import mqtt_pb2

R = "digits:1.0.0"
ACTIVE = mqtt_pb2.INSTALL_PHASE_ACTIVE
FETCHING = mqtt_pb2.INSTALL_PHASE_FETCHING


def info(device_id: str, phase: Any, active: str = "", gen: int = 0) -> pb.DeviceInfo:
    return pb.DeviceInfo(device_id=device_id, fleet="f", phase=phase, active_release=active,
                         generation_applied=gen, online=True)  # fmt: skip


class Scripted:
    """Answers ``list_devices`` with the next reply of a script (the last one repeats)."""

    def __init__(self, *replies: list[pb.DeviceInfo]) -> None:
        self.replies = list(replies)
        self.calls = 0

    def list_devices(self, fleet: str = "") -> list[pb.DeviceInfo]:
        self.calls += 1
        return self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def run(client: Scripted, targets: dict[str, int], timeout_s: float = 10.0) -> Any:
    clock = Clock()
    seen: list[int] = []
    result = watch(
        cast(ControllerClient, client), release=R, fleet="f", targets=targets,
        timeout_s=timeout_s, interval_s=1.0, clock=clock, sleep=clock.sleep,
        on_progress=lambda p: seen.append(p.count(Outcome.CONVERGED)),
    )  # fmt: skip
    return result, seen, clock.now


def test_stops_once_every_device_converged() -> None:
    client = Scripted(
        [info("a", FETCHING, gen=0), info("b", FETCHING, gen=0)],
        [info("a", ACTIVE, R, gen=1), info("b", FETCHING, gen=0)],
        [info("a", ACTIVE, R, gen=1), info("b", ACTIVE, R, gen=2), info("other", ACTIVE, R, gen=9)],
    )
    result, seen, elapsed = run(client, {"a": 1, "b": 2})
    assert result.progress.ok and not result.timed_out
    assert seen == [0, 1, 2]
    assert elapsed == 2.0
    assert set(result.devices) == {"a", "b"}  # devices outside the deploy are left out


def test_gives_up_at_the_timeout() -> None:
    client = Scripted([info("a", FETCHING, gen=0)])
    result, _, elapsed = run(client, {"a": 1}, timeout_s=3.0)
    assert result.timed_out and not result.progress.ok
    assert result.progress.devices[0].outcome is Outcome.PENDING
    assert elapsed == 3.0 and client.calls == 4


def test_stops_early_when_the_rest_failed() -> None:
    failed = pb.DeviceInfo(
        device_id="b",
        phase=mqtt_pb2.INSTALL_PHASE_ROLLED_BACK,
        active_release="digits:0.9.0",
        generation_applied=2,
        last_error="slow",
    )
    client = Scripted([info("a", ACTIVE, R, gen=1), failed])
    result, _, elapsed = run(client, {"a": 1, "b": 2})
    assert not result.timed_out and not result.progress.ok
    assert [d.outcome for d in result.progress.devices] == [Outcome.CONVERGED, Outcome.FAILED]
    assert elapsed == 0.0
