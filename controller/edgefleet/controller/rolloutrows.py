"""Rollouts <-> ORM rows, and device rows -> the engine's ``Report``: the column-by-column
copying that ``rolloutstore`` would drown in."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edgefleet.controller.db import (
    DesiredRow,
    DeviceRow,
    RolloutHistoryRow,
    RolloutRow,
    RolloutTargetRow,
    TelemetryRow,
)
from edgefleet.controller.records import RolloutRecord
from edgefleet.controller.rollouts import codec
from edgefleet.controller.rollouts.engine import (
    DeviceState,
    Report,
    Rollout,
    RolloutPhase,
    Target,
)
from edgefleet.controller.rollouts.history import Kind, Transition

_LEGACY_KINDS = {"all_at_once": "all-at-once"}  # rows written before staged rollouts


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


def target(row: RolloutTargetRow) -> Target:
    return Target(
        device_id=row.device_id,
        state=DeviceState(row.state),
        generation=row.generation,
        sent_at=row.sent_at,
        previous_release=row.previous_release,
        baseline_p95_ms=row.baseline_p95_ms,
        reason=row.reason,
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


def record(row: RolloutRow, targets: Sequence[RolloutTargetRow]) -> RolloutRecord:
    rollout = Rollout(
        id=row.rollout_id,
        fleet=row.fleet,
        release=row.release,
        strategy=codec.strategy_from_json(row.parameters),
        targets=tuple(target(t) for t in sorted(targets, key=lambda t: t.device_id)),
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


def report(d: DeviceRow, x: TelemetryRow | None, desired: DesiredRow | None) -> Report:
    """What the engine needs of one device. Latency and error rate come from the latest
    telemetry window's own counts (never from timestamps, which a device's clock may skew);
    a window without requests says nothing about either."""
    measured = x is not None and x.requests > 0
    return Report(
        device_id=d.device_id,
        active_release=d.active_release,
        phase=d.phase or "",
        generation_applied=d.generation_applied,
        last_desired=desired.generation if desired is not None else 0,
        last_error=d.last_error,
        metrics_release=x.release if x is not None else "",
        p95_ms=x.p95_ms if x is not None and measured else None,
        error_rate=x.errors / x.requests if x is not None and measured else None,
    )
