"""What ``edgectl`` reads from a ``RolloutInfo``: finished, ok, failed devices; and the follow
loop's timeout, against a fake at the client seam and a fake clock."""

from __future__ import annotations

from typing import Any, cast

import pytest

from edgefleet.common import rolloutwords
from edgefleet.edgectl import following
from edgefleet.edgectl.client import ControllerClient
from edgefleet.edgectl.rollout_status import age, step_text
from edgefleet.v1 import controller_pb2 as pb


def info(phase: str, *states: tuple[str, str], kind: str = "canary", **kw: Any) -> pb.RolloutInfo:
    devices = [
        pb.RolloutDevice(
            device_id=f"d{i}", target_state=rolloutwords.target_state_value(s), reason=r
        )
        for i, (s, r) in enumerate(states)
    ]
    return pb.RolloutInfo(
        rollout_id="ro-1",
        rollout_phase=rolloutwords.phase_value(phase),
        strategy=pb.RolloutStrategy(strategy_kind=rolloutwords.kind_value(kind)),
        devices=devices,
        **kw,
    )


@pytest.mark.parametrize(
    ("rollout", "finished", "ok", "failed"),
    [
        (info("canary", ("sent", "")), False, False, 0),
        (info("paused", ("healthy", "")), False, False, 0),
        (info("succeeded", ("healthy", ""), ("healthy", "")), True, True, 0),
        (info("rolled_back", ("reverted", "golden mismatch"), ("waiting", "")), True, False, 1),
        (info("rolled_back", ("reverted", ""), ("reverted", "")), True, False, 0),
        (info("rolling_back", ("failed", "x"), ("rolling_back", "")), False, False, 1),
        (info("rolled_back", ("reverted", "no previous release")), True, False, 0),
        (info("rolled_back", ("reverted", ""), kind="rollback"), True, True, 0),
        (info("rolled_back", ("rolling_back", ""), kind="rollback"), True, False, 0),
    ],
)
def test_reading_a_rollout(rollout: pb.RolloutInfo, finished: bool, ok: bool, failed: int) -> None:
    assert following.finished(rollout) is finished
    assert following.ok(rollout) is ok
    assert following.failed_count(rollout) == failed


def test_a_partly_listed_rollout_is_counted_from_device_counts() -> None:
    """GetRollout of a big rollout lists its first devices; the counts cover them all."""
    big = info("wave", ("healthy", ""), ("sent", ""))
    big.devices_total = 10_000
    big.device_counts.update({"healthy": 6_000, "sent": 3_990, "failed": 10})
    assert following.partial(big) and following.total(big) == 10_000
    assert following.count(big, "healthy") == 6_000
    assert following.count(big, "healthy", "sent") == 9_990
    assert following.failed_count(big) == 10


@pytest.mark.parametrize(
    ("sizes", "step", "text"), [([], 0, "-"), ([1, 3], 0, "1/2"), ([1, 2, 4], 2, "3/3")]
)
def test_step_text(sizes: list[int], step: int, text: str) -> None:
    assert step_text(info("wave", step=step, step_sizes=sizes)) == text


def test_age() -> None:
    assert [age(ms, now_ms=200_000_000) for ms in (0, 199_999_000, 199_000_000, 100_000_000)] == [
        "-", "1s", "16m", "1d",
    ]  # fmt: skip


class FakeClient:
    def __init__(self, phases: list[str]) -> None:
        self.phases = phases

    def get_rollout(self, rollout_id: str) -> pb.RolloutInfo:
        phase = self.phases.pop(0) if len(self.phases) > 1 else self.phases[0]
        return info(phase, ("sent", ""), fleet="f")

    def devices_page(
        self, fleet: str = "", *, page_size: int = 0, page_token: str = ""
    ) -> pb.ListDevicesResponse:
        devices = [pb.DeviceInfo(device_id="d0", fleet=fleet), pb.DeviceInfo(device_id="other")]
        return pb.ListDevicesResponse(devices=devices, total=2)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def test_follow_stops_when_the_rollout_finished() -> None:
    clock, seen = Clock(), list[str]()
    client = cast(ControllerClient, FakeClient(["canary", "wave", "succeeded"]))
    result = following.follow(
        client, "ro-1", timeout_s=10, on_progress=lambda s: seen.append(following.phase(s.info)),
        clock=clock, sleep=clock.sleep,
    )  # fmt: skip
    assert seen == ["canary", "wave", "succeeded"]
    assert result.ok and not result.timed_out
    assert set(result.snapshot.devices) == {"d0"}


def test_follow_gives_up_at_the_timeout() -> None:
    clock = Clock()
    client = cast(ControllerClient, FakeClient(["paused"]))
    result = following.follow(client, "ro-1", timeout_s=2, clock=clock, sleep=clock.sleep)
    assert result.timed_out and not result.ok
    assert clock.now == pytest.approx(2.0)
