"""The rollout engine's pure core: which device gets which generation.

All at once for now: every device of the fleet gets the release in one step. Canary and waves
will grow here as ``plan_rollout(rollout, devices, health, *, now) -> list[Command]``; the
shell (``deploying``) stays the same: lock, plan, persist, publish.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from edgefleet.controller.records import DeployTarget


class Strategy(StrEnum):
    ALL_AT_ONCE = "all_at_once"


@dataclass(frozen=True)
class Member:
    """A device of the fleet as the planner sees it."""

    device_id: str
    last_desired: int  # the last generation the controller issued it; 0 = none
    applied: int  # the generation the device reports applied


def next_generation(member: Member) -> int:
    """Strictly above everything issued and everything applied: a device whose state outlived
    the controller's database (restored from a backup, moved between controllers) still takes
    the new desired state instead of refusing it as stale."""
    return max(member.last_desired, member.applied) + 1


def plan_all_at_once(members: Iterable[Member]) -> tuple[DeployTarget, ...]:
    ordered = sorted(members, key=lambda m: m.device_id)
    return tuple(DeployTarget(m.device_id, next_generation(m)) for m in ordered)
