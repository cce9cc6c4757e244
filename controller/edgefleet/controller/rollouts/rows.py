"""Rollouts <-> ORM rows, and device rows -> the engine's ``Report``: the column-by-column
copying that ``store`` would drown in, and what a stored rollout is (``RolloutRecord``: the
engine's ``Rollout`` with the kind and times only the shell keeps)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from edgefleet.controller.db import (
    DesiredRow,
    DeviceRow,
    RolloutHistoryRow,
    RolloutRow,
    RolloutTargetRow,
    TelemetryRow,
)
from edgefleet.controller.rollouts import codec
from edgefleet.controller.rollouts.engine import (
    Report,
    Rollout,
    RolloutPhase,
    Target,
    TargetState,
)
from edgefleet.controller.rollouts.history import Kind, Transition

ROLLBACK = "rollback"
"""The kind of a fleet rollback's rollout record (the others are ``strategy.Kind`` values)."""

_LEGACY_KINDS = {"all_at_once": "all-at-once"}  # rows written before staged rollouts


@dataclass(frozen=True)
class RolloutRecord:
    """A rollout as stored: the engine's state plus what only the shell knows."""

    rollout: Rollout
    kind: str  # all-at-once | canary | rollback
    created_at_ms: int
    updated_at_ms: int

    @property
    def id(self) -> str:
        return self.rollout.id


def set_rollout(row: RolloutRow, rec: RolloutRecord) -> None:
    r = rec.rollout
    row.rollout_id = r.id
    row.release = r.release
    row.fleet = r.fleet
    row.strategy = rec.kind
    row.created_at_ms = rec.created_at_ms
    row.parameters = codec.strategy_to_json(r.strategy)
    row.phase = r.phase.value
    row.step = r.step
    row.step_done_at = r.step_done_at
    row.paused_phase = r.paused_phase.value if r.paused_phase is not None else None
    row.reason = r.reason
    row.finished = r.phase.finished
    row.updated_at_ms = rec.updated_at_ms


def set_target(row: RolloutTargetRow, t: Target) -> None:
    row.generation = t.generation
    row.state = t.state.value
    row.sent_at = t.sent_at
    row.previous_release = t.previous_release
    row.baseline_p95_ms = t.baseline_p95_ms
    row.reason = t.reason


TARGET_COLUMNS = (
    RolloutTargetRow.device_id,
    RolloutTargetRow.state,
    RolloutTargetRow.generation,
    RolloutTargetRow.sent_at,
    RolloutTargetRow.previous_release,
    RolloutTargetRow.baseline_p95_ms,
    RolloutTargetRow.reason,
)
"""What ``target`` reads of a ``rollout_targets`` row: selected as plain columns, so loading a
rollout of 10,000 devices builds no ORM object per device."""


def target(row: Sequence[Any]) -> Target:
    """One ``rollout_targets`` row's ``TARGET_COLUMNS``."""
    device_id, state, generation, sent_at, previous_release, baseline_p95_ms, reason = row
    return Target(
        device_id=device_id,
        state=TargetState(state),
        generation=generation,
        sent_at=sent_at,
        previous_release=previous_release,
        baseline_p95_ms=baseline_p95_ms,
        reason=reason,
    )


def history_row(rollout_id: str, t: Transition) -> RolloutHistoryRow:
    return RolloutHistoryRow(
        rollout_id=rollout_id,
        at_ms=t.at_ms,
        kind=t.kind.value,
        device_id=t.device_id,
        old=t.old,
        new=t.new,
        message=t.message,
    )


def transition(row: Sequence[Any]) -> Transition:
    """One ``rollout_history`` row's columns: at_ms, kind, device_id, old, new, message."""
    at_ms, kind, device_id, old, new, message = row
    return Transition(int(at_ms), Kind(kind), device_id, old, new, message)


def record(row: RolloutRow, targets: Sequence[Target]) -> RolloutRecord:
    """``targets``: the rollout's, in device id order."""
    rollout = Rollout(
        id=row.rollout_id,
        fleet=row.fleet,
        release=row.release,
        strategy=codec.strategy_from_json(row.parameters),
        targets=tuple(targets),
        phase=RolloutPhase(row.phase),
        step=row.step,
        step_done_at=row.step_done_at,
        paused_phase=RolloutPhase(row.paused_phase) if row.paused_phase else None,
        reason=row.reason,
    )
    return RolloutRecord(
        rollout=rollout,
        kind=_LEGACY_KINDS.get(row.strategy, row.strategy),
        created_at_ms=row.created_at_ms,
        updated_at_ms=row.updated_at_ms or row.created_at_ms,
    )


REPORT_COLUMNS = (
    DeviceRow.device_id,
    DeviceRow.active_release,
    DeviceRow.phase,
    DeviceRow.generation_applied,
    DeviceRow.last_error,
    TelemetryRow.release,
    TelemetryRow.requests,
    TelemetryRow.errors,
    TelemetryRow.p95_ms,
    DesiredRow.generation,
)
"""What ``report`` reads of a device, its telemetry and its desired state (outer joins: None
where a device has none): plain columns, read every rollout tick for every device."""


def report(row: Sequence[Any]) -> Report:
    """What the engine needs of one device (``REPORT_COLUMNS``). Latency and error rate come
    from the latest telemetry window's own counts (never from timestamps, which a device's clock
    may skew); a window without requests says nothing about either."""
    device_id, active, phase, applied, last_error, x_release, requests, errors, p95, desired = row
    measured = requests is not None and requests > 0
    return Report(
        device_id=device_id,
        active_release=active,
        phase=phase or "",
        generation_applied=applied,
        last_desired=desired if desired is not None else 0,
        last_error=last_error,
        metrics_release=x_release or "",
        p95_ms=p95 if measured else None,
        error_rate=errors / requests if measured else None,
    )
