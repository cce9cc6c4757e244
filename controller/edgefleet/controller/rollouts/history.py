"""A rollout's history: what changed between two states of it, as timestamped transitions.

Pure, like the engine. The ``shell`` calls ``transitions(before, after)`` with every
state it persists, so only changes are recorded and a tick that changed nothing records
nothing: a phase change, a gate decision (a device failed its gate, a step passed, the
rollout succeeded or rolled back, with the one-line reason), or a device moving between
waiting, sent, healthy, failed, rolling_back and reverted. ``bounded`` keeps a rollout's
history to ``LIMIT`` device changes; phase changes and gate decisions are few and always kept
(up to ``LIMIT + RESERVE`` entries in all).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from edgefleet.controller.rollouts.engine import (
    NO_PREVIOUS,
    Rollout,
    RolloutPhase,
    Target,
    TargetState,
)

LIMIT = 5000
"""Device changes kept per rollout: a 1,000-device rollout that rolls back needs about 4,000."""
RESERVE = 500
"""Room kept beyond ``LIMIT`` for phase changes and gate decisions."""

_BACK = (RolloutPhase.ROLLING_BACK, RolloutPhase.ROLLED_BACK)
_RETURNING = (TargetState.ROLLING_BACK, TargetState.REVERTED)
FAILED = TargetState.FAILED.value


class Kind(StrEnum):
    PHASE = "phase"
    GATE = "gate"
    DEVICE = "device"


@dataclass(frozen=True)
class Transition:
    at_ms: int
    kind: Kind
    device_id: str = ""
    old: str = ""  # phase or device state before ("" at the start); a gate: ""
    new: str = ""  # ... after; a gate decision: passed | failed
    message: str = ""


def transitions(before: Rollout | None, after: Rollout, *, at_ms: int) -> list[Transition]:
    """What changed from ``before`` (None: the rollout is new) to ``after``, in this order:
    the devices, the gate decisions they led to, then the rollout's phase."""
    out: list[Transition] = []
    old_states = {t.device_id: t.state for t in before.targets} if before is not None else {}
    failed: list[Transition] = []
    for t in after.targets:
        old = old_states.get(t.device_id, TargetState.WAITING)
        if old is t.state:
            continue
        if not _failed(old, t):
            out.append(Transition(at_ms, Kind.DEVICE, t.device_id, old.value, t.state.value))
            continue
        why = after.explain(t.device_id)
        out.append(Transition(at_ms, Kind.DEVICE, t.device_id, old.value, FAILED, why))
        if t.state is not TargetState.FAILED:  # failed and sent back in the same step
            out.append(Transition(at_ms, Kind.DEVICE, t.device_id, FAILED, t.state.value))
        failed.append(Transition(at_ms, Kind.GATE, t.device_id, "", FAILED, why))
    out.extend(failed)
    out.extend(_decisions(before, after, at_ms=at_ms))
    old_phase = before.phase.value if before is not None else ""
    if old_phase != after.phase.value:
        out.append(Transition(at_ms, Kind.PHASE, "", old_phase, after.phase.value, after.reason))
    return out


def _failed(old: TargetState, t: Target) -> bool:
    """Whether the device failed in this change, though it may already be on its way back
    (the engine fails a device and aborts the rollout in one step)."""
    if t.state is TargetState.FAILED:
        return True
    sent_back = old in (TargetState.SENT, TargetState.HEALTHY) and t.state in _RETURNING
    return sent_back and bool(t.reason.removesuffix(NO_PREVIOUS).strip("; "))


def _decisions(before: Rollout | None, after: Rollout, *, at_ms: int) -> list[Transition]:
    """A step that passed its gate, the rollout that succeeded, the one that was aborted."""
    was = before.phase if before is not None else RolloutPhase.PENDING
    steps = after.steps
    healthy = after.count(TargetState.HEALTHY)
    failed = after.count(TargetState.FAILED)
    out = []
    if before is not None and after.step > before.step:
        goal = steps[after.step] if after.step < len(steps) else len(after.targets)
        out.append(
            Transition(
                at_ms,
                Kind.GATE,
                new="passed",
                message=f"step {before.step + 1} passed: {healthy} healthy, {failed} failed; "
                f"step {after.step + 1} goes to {goal} devices",
            )
        )
    if after.phase is RolloutPhase.SUCCEEDED and was is not RolloutPhase.SUCCEEDED:
        out.append(
            Transition(
                at_ms,
                Kind.GATE,
                new="passed",
                message=f"succeeded: {healthy} of {len(after.targets)} devices healthy, "
                f"{failed} failed",
            )
        )
    if after.phase in _BACK and was not in _BACK:
        out.append(Transition(at_ms, Kind.GATE, new="failed", message=after.reason))
    return out


def bounded(new: Sequence[Transition], *, have: int) -> list[Transition]:
    """``new`` as far as it fits after ``have`` entries: device changes up to ``LIMIT``, the
    others up to ``LIMIT + RESERVE``."""
    kept, count = [], have
    for t in new:
        if count >= LIMIT + RESERVE or (t.kind is Kind.DEVICE and count >= LIMIT):
            continue
        kept.append(t)
        count += 1
    return kept
