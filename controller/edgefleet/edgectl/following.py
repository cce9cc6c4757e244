"""Following a staged rollout: poll ``GetRollout`` (and ``ListDevices``) until it finishes.

The ``Deploy`` reply names only the devices of the first step (the canary), so the CLI follows
the rollout itself: the controller decides each step, and says in the rollout's phase when it
is done. ``ListDevices`` adds each device's install phase for the live view. The helpers at
the top read a ``RolloutInfo`` (finished? ok? how many failed?) and do no I/O; ``follow`` is
the loop, with clock and sleep as parameters.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from edgefleet.common import rolloutwords
from edgefleet.v1 import controller_pb2 as pb

if TYPE_CHECKING:  # grpc: loaded when a command calls, not for --help
    from edgefleet.edgectl.client import ControllerClient

POLL_INTERVAL_S = 0.25
FINISHED_PHASES = frozenset({pb.ROLLOUT_PHASE_SUCCEEDED, pb.ROLLOUT_PHASE_ROLLED_BACK})
BACK_STATES = frozenset({pb.TARGET_STATE_ROLLING_BACK, pb.TARGET_STATE_REVERTED})
NO_PREVIOUS = "no previous release"  # the reason the controller gives a device it cannot revert


def phase(info: pb.RolloutInfo) -> str:
    """The rollout's phase as edgectl prints it: ``canary``, ``rolled_back``, ..."""
    return rolloutwords.phase_word(info.rollout_phase)


def state(d: pb.RolloutDevice) -> str:
    """The device's state in the rollout as edgectl prints it: ``sent``, ``healthy``, ..."""
    return rolloutwords.target_state_word(d.target_state)


def kind(info: pb.RolloutInfo) -> str:
    """The rollout's strategy kind as edgectl prints it: ``all-at-once``, ``canary``, ``rollback``
    (``""``: the deploy left it to the controller)."""
    return rolloutwords.kind_word(info.strategy.strategy_kind)


def finished(info: pb.RolloutInfo) -> bool:
    return info.rollout_phase in FINISHED_PHASES


def is_rollback(info: pb.RolloutInfo) -> bool:
    return info.strategy.strategy_kind == pb.STRATEGY_KIND_ROLLBACK


def ok(info: pb.RolloutInfo) -> bool:
    """A finished rollout that did what it was for: a deploy succeeded, or a fleet rollback
    brought every device it sent back to its release."""
    if is_rollback(info):
        return info.rollout_phase == pb.ROLLOUT_PHASE_ROLLED_BACK and not any(
            d.target_state == pb.TARGET_STATE_ROLLING_BACK for d in info.devices
        )
    return info.rollout_phase == pb.ROLLOUT_PHASE_SUCCEEDED


def device_failed(d: pb.RolloutDevice) -> bool:
    """The device failed the release: it is ``failed``, or was sent back after a failure
    (a device sent back only because the rollout stopped carries no reason of its own)."""
    if d.target_state == pb.TARGET_STATE_FAILED:
        return True
    reason = d.reason.replace(NO_PREVIOUS, "").strip("; ")
    return d.target_state in BACK_STATES and bool(reason)


def total(info: pb.RolloutInfo) -> int:
    """The rollout's devices, listed or not (GetRollout lists the first 1,000)."""
    return max(info.devices_total, len(info.devices))


def partial(info: pb.RolloutInfo) -> bool:
    """GetRollout listed only some devices: counts come from ``device_counts``."""
    return info.devices_total > len(info.devices)


def count(info: pb.RolloutInfo, *states: str) -> int:
    """The rollout's devices in these states (words, as ``device_counts`` keys them)."""
    if partial(info):
        return sum(info.device_counts.get(s, 0) for s in states)
    return sum(1 for d in info.devices if state(d) in states)


def failed_count(info: pb.RolloutInfo) -> int:
    if is_rollback(info):
        return 0
    if partial(info):  # the unlisted ones' reasons are not known: the failed state counts
        return info.device_counts.get("failed", 0)
    return sum(1 for d in info.devices if device_failed(d))


@dataclass(frozen=True)
class Snapshot:
    """One poll: the rollout and what its devices last reported."""

    info: pb.RolloutInfo
    devices: dict[str, pb.DeviceInfo] = field(default_factory=dict)


@dataclass(frozen=True)
class FollowResult:
    snapshot: Snapshot
    timed_out: bool

    @property
    def ok(self) -> bool:
        return not self.timed_out and ok(self.snapshot.info)


def snapshot(client: ControllerClient, rollout_id: str) -> Snapshot:
    """The rollout and what its listed devices last reported: the fleet's device pages (in id
    order) only as far as the last listed device, not all 10,000 of a big fleet."""
    info = client.get_rollout(rollout_id)
    ids = {d.device_id for d in info.devices}
    devices: dict[str, pb.DeviceInfo] = {}
    token = ""
    while ids:
        page = client.devices_page(info.fleet, page_size=1000, page_token=token)
        devices.update((d.device_id, d) for d in page.devices if d.device_id in ids)
        token = page.next_page_token
        if not token or len(devices) == len(ids) or page.devices[-1].device_id >= max(ids):
            break
    return Snapshot(info, devices)


def follow(
    client: ControllerClient,
    rollout_id: str,
    *,
    timeout_s: float | None,
    on_progress: Callable[[Snapshot], None] = lambda _: None,
    interval_s: float = POLL_INTERVAL_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> FollowResult:
    """Poll until the rollout finished or ``timeout_s`` passed (``None``: no limit)."""
    deadline = None if timeout_s is None else clock() + timeout_s
    while True:
        snap = snapshot(client, rollout_id)
        on_progress(snap)
        if finished(snap.info):
            return FollowResult(snap, timed_out=False)
        if deadline is not None and clock() >= deadline:
            return FollowResult(snap, timed_out=True)
        wait = interval_s if deadline is None else min(interval_s, max(0.0, deadline - clock()))
        sleep(wait)
