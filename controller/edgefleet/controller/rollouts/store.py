"""Rollouts in SQL: one ``rollouts`` row per rollout, one ``rollout_targets`` row per device,
and the reports the engine reads from the device tables.

``save`` writes a step in one transaction: the rollout, the targets that changed, and the new
generation of every device about to be sent a desired state. Only then does the caller publish
(``shell``), so a generation on the wire is always one the database already holds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from edgefleet.common.errors import NotFoundError
from edgefleet.controller.db import (
    Database,
    DesiredRow,
    DeviceRow,
    EnrolledDeviceRow,
    EventRow,
    RolloutHistoryRow,
    RolloutRow,
    RolloutTargetRow,
    TelemetryRow,
)
from edgefleet.controller.enrollment import SKIPPED_BY_ROLLOUTS
from edgefleet.controller.rollouts import history, rows
from edgefleet.controller.rollouts.engine import Report, RolloutPhase, SendDesired, Target
from edgefleet.controller.rollouts.history import Transition
from edgefleet.controller.rollouts.rows import ROLLBACK, RolloutRecord

GATE_FAILED = "rollout_gate_failed"
"""The event kind the controller writes on a device that failed its rollout's gate: the
message is the one-line explanation, so ``edgectl events`` shows it beside the device's own."""

_ABORTED = (RolloutPhase.ROLLING_BACK.value, RolloutPhase.ROLLED_BACK.value)


@dataclass(frozen=True)
class RolloutPage:
    """A rollout as GetRollout shows it: its first targets only, every target counted."""

    record: RolloutRecord  # its rollout's targets: the first ``device_limit``, by device id
    counts: Mapping[str, int]  # every target, by state
    total: int  # targets in all
    steps: tuple[int, ...]  # cumulative device counts per step, over all targets


def _with_targets(
    session: Session, rollout_id: str, *, limit: int | None = None
) -> tuple[RolloutRow, list[Target]]:
    """The rollout's row and its targets in device id order (the first ``limit`` of them);
    NotFoundError for an unknown rollout."""
    row = session.get(RolloutRow, rollout_id)
    if row is None:
        raise NotFoundError("rollout", rollout_id)
    stmt = (
        select(*rows.TARGET_COLUMNS)
        .where(RolloutTargetRow.rollout_id == rollout_id)
        .order_by(RolloutTargetRow.device_id)
    )
    if limit is not None:
        stmt = stmt.limit(limit)
    return row, [rows.target(t) for t in session.execute(stmt)]


@dataclass(frozen=True)
class Issued:
    """A desired state the database says was issued (for re-sending it)."""

    device_id: str
    release: str
    generation: int
    issued_at_ms: int


@dataclass(frozen=True)
class Current:
    """A device's current desired state as the database holds it, and how far the device is."""

    device_id: str
    fleet: str
    rollout_id: str
    release: str
    generation: int
    issued_at_ms: int
    generation_applied: int


class RolloutStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def current_desired(self, *, lagging_only: bool = False) -> list[Current]:
        """Every device's last issued desired state (only the devices that have not applied it
        yet, with ``lagging_only``), for re-publishing."""
        stmt = select(DesiredRow, DeviceRow.fleet, DeviceRow.generation_applied).join(
            DeviceRow, DeviceRow.device_id == DesiredRow.device_id
        )
        if lagging_only:
            stmt = stmt.where(DeviceRow.generation_applied < DesiredRow.generation)
        with self._db.read() as session:
            return [
                Current(
                    w.device_id,
                    fleet,
                    w.rollout_id,
                    w.release,
                    w.generation,
                    w.issued_at_ms,
                    applied or 0,
                )
                for w, fleet, applied in session.execute(stmt.order_by(DesiredRow.device_id))
            ]

    def load(self, rollout_id: str) -> RolloutRecord:
        with self._db.read() as session:
            return rows.record(*_with_targets(session, rollout_id))

    def page(self, rollout_id: str, *, device_limit: int) -> RolloutPage:
        """The rollout with its first ``device_limit`` targets (by device id) and every target
        counted by state: what GetRollout shows, without reading 10,000 targets to list 1,000."""
        t = RolloutTargetRow
        with self._db.read() as session:
            row, targets = _with_targets(session, rollout_id, limit=device_limit)
            by_state = select(t.state, func.count()).where(t.rollout_id == rollout_id)
            counts = {s: int(n) for s, n in session.execute(by_state.group_by(t.state))}
            rec = rows.record(row, targets)
        total = sum(counts.values())
        return RolloutPage(rec, counts, total, rec.rollout.strategy.steps(total))

    def history(self, rollout_id: str, *, device_changes: int = 0) -> tuple[Transition, ...]:
        """The rollout's transitions, oldest first (plain rows, not ORM objects: a rollout of
        1,000 devices has thousands, and followers poll it). ``device_changes`` > 0: every
        phase change and gate decision but only the newest that many device changes."""
        h = RolloutHistoryRow
        cols = (h.at_ms, h.kind, h.device_id, h.old, h.new, h.message)
        stmt = select(*cols).where(h.rollout_id == rollout_id).order_by(h.id)
        if device_changes > 0:
            device = history.Kind.DEVICE.value
            newest = (
                select(h.id)
                .where(h.rollout_id == rollout_id, h.kind == device)
                .order_by(h.id.desc())
                .limit(device_changes)
            )
            stmt = stmt.where(or_(h.kind != device, h.id.in_(newest.scalar_subquery())))
        with self._db.read() as session:
            return tuple(rows.transition(row) for row in session.execute(stmt))

    def unfinished_ids(self, fleet: str = "") -> list[str]:
        stmt = select(RolloutRow.rollout_id).where(~RolloutRow.finished)
        if fleet:
            stmt = stmt.where(RolloutRow.fleet == fleet)
        with self._db.read() as session:
            return list(session.scalars(stmt.order_by(RolloutRow.created_at_ms)))

    def list_rollouts(self, fleet: str = "", *, limit: int = 20) -> list[RolloutRecord]:
        """Newest first."""
        return [self.load(i) for i in self._newest_ids(fleet, limit)]

    def list_pages(self, fleet: str = "", *, limit: int, device_limit: int) -> list[RolloutPage]:
        """``list_rollouts`` as ``page``s: newest first, each with its first devices."""
        return [self.page(i, device_limit=device_limit) for i in self._newest_ids(fleet, limit)]

    def _newest_ids(self, fleet: str, limit: int) -> list[str]:
        """The ids of ``fleet``'s (all fleets: "") newest ``limit`` rollouts, newest first."""
        stmt = select(RolloutRow.rollout_id).order_by(
            RolloutRow.created_at_ms.desc(), RolloutRow.rollout_id.desc()
        )
        if fleet:
            stmt = stmt.where(RolloutRow.fleet == fleet)
        with self._db.read() as session:
            return list(session.scalars(stmt.limit(limit)))

    def fleet_devices(self, fleet: str) -> list[str]:
        """The fleet's devices a rollout may target: not revoked or quarantined."""
        held = select(EnrolledDeviceRow.device_id).where(
            EnrolledDeviceRow.state.in_(SKIPPED_BY_ROLLOUTS)
        )
        stmt = select(DeviceRow.device_id).where(
            DeviceRow.fleet == fleet, DeviceRow.device_id.not_in(held)
        )
        with self._db.read() as session:
            return sorted(session.scalars(stmt))

    def runtimes(self, device_ids: Iterable[str]) -> dict[str, tuple[str, ...]]:
        """The release runtimes each device reported (empty: none reported yet)."""
        stmt = select(DeviceRow.device_id, DeviceRow.runtimes).where(
            DeviceRow.device_id.in_(list(device_ids))
        )
        with self._db.read() as session:
            return {d: tuple(r or ()) for d, r in session.execute(stmt)}

    def previous_releases(self, device_ids: Iterable[str]) -> dict[str, str]:
        stmt = select(DeviceRow.device_id, DeviceRow.previous_release).where(
            DeviceRow.device_id.in_(list(device_ids))
        )
        with self._db.read() as session:
            return {d: p for d, p in session.execute(stmt)}

    def reports(self, device_ids: Iterable[str]) -> dict[str, Report]:
        """Each device's ``Report`` (plain columns, no ORM object per device)."""
        stmt = (
            select(*rows.REPORT_COLUMNS)
            .select_from(DeviceRow)
            .outerjoin(TelemetryRow, TelemetryRow.device_id == DeviceRow.device_id)
            .outerjoin(DesiredRow, DesiredRow.device_id == DeviceRow.device_id)
            .where(DeviceRow.device_id.in_(list(device_ids)))
        )
        with self._db.read() as session:
            return {row[0]: rows.report(row) for row in session.execute(stmt)}

    def issued(self, rollout_id: str, generations: dict[str, int]) -> list[Issued]:
        """The desired states of this rollout still current for these devices."""
        stmt = select(DesiredRow).where(
            DesiredRow.rollout_id == rollout_id, DesiredRow.device_id.in_(list(generations))
        )
        with self._db.read() as session:
            return [
                Issued(r.device_id, r.release, r.generation, r.issued_at_ms)
                for r in session.scalars(stmt)
                if generations[r.device_id] == r.generation
            ]

    def save(
        self,
        before: RolloutRecord | None,
        after: RolloutRecord,
        commands: Sequence[SendDesired],
        *,
        issued_at_ms: int,
        transitions: Sequence[Transition] = (),
    ) -> None:
        """``transitions``: what changed (``history.transitions``), kept within the bound."""
        rid = after.id
        old = {t.device_id: t for t in before.rollout.targets} if before is not None else {}
        with self._db.write() as session:
            row = session.get(RolloutRow, rid)
            if row is None:
                row = RolloutRow()
                session.add(row)
            rows.set_rollout(row, after)
            session.flush()  # the rollout before its targets (foreign key)
            changed = [t for t in after.rollout.targets if old.get(t.device_id) != t]
            # The rows to change, in one query each (not one per device: a first step of
            # 10,000 devices would be 20,000 SELECTs).
            held: dict[str, RolloutTargetRow] = {}
            if changed and before is not None:
                stmt = select(RolloutTargetRow).where(
                    RolloutTargetRow.rollout_id == rid,
                    RolloutTargetRow.device_id.in_([t.device_id for t in changed]),
                )
                held = {r.device_id: r for r in session.scalars(stmt)}
            for t in changed:
                trow = held.get(t.device_id)
                if trow is None:
                    trow = RolloutTargetRow(rollout_id=rid, device_id=t.device_id)
                    session.add(trow)
                rows.set_target(trow, t)
            issued: dict[str, DesiredRow] = {}
            if commands:
                stmt_d = select(DesiredRow).where(
                    DesiredRow.device_id.in_([c.device_id for c in commands])
                )
                issued = {r.device_id: r for r in session.scalars(stmt_d)}
            for c in commands:
                desired = issued.get(c.device_id)
                if desired is None:
                    desired = issued[c.device_id] = DesiredRow(device_id=c.device_id, generation=0)
                    session.add(desired)
                elif desired.generation >= c.generation:  # the engine's invariant; never publish
                    raise RuntimeError(
                        f"generation {c.generation} for {c.device_id} is not above the issued "
                        f"{desired.generation}"
                    )
                desired.generation = c.generation
                desired.release = c.release
                desired.rollout_id = rid
                desired.issued_at_ms = issued_at_ms
            if transitions:
                self._record(session, after, transitions, new=before is None)

    def _record(
        self, session: Session, rec: RolloutRecord, transitions: Sequence[Transition], *, new: bool
    ) -> None:
        """Append the transitions within the bound, and an event on each device that failed a
        gate (its one-line reason)."""
        have = 0
        if not new:
            count = select(func.count()).select_from(RolloutHistoryRow)
            have = session.scalar(count.where(RolloutHistoryRow.rollout_id == rec.id)) or 0
        generations = {t.device_id: t.generation for t in rec.rollout.targets}
        for t in history.bounded(transitions, have=have):
            session.add(rows.history_row(rec.id, t))
            if t.kind is history.Kind.GATE and t.device_id and t.new == "failed":
                session.add(
                    EventRow(
                        device_id=t.device_id,
                        kind=GATE_FAILED,
                        release=rec.rollout.release,
                        generation=generations.get(t.device_id, 0),
                        message=f"{t.message} (rollout {rec.id})",
                        at_ms=t.at_ms,
                        received_ms=t.at_ms,
                    )
                )

    def phases(self) -> list[tuple[str, str, str, str]]:
        """(rollout, fleet, release, phase) of every unfinished rollout and each fleet's newest."""
        newest = (
            select(RolloutRow.fleet, func.max(RolloutRow.created_at_ms).label("at"))
            .group_by(RolloutRow.fleet)
            .subquery()
        )
        stmt = select(RolloutRow.rollout_id, RolloutRow.fleet, RolloutRow.release, RolloutRow.phase)
        latest = stmt.join(
            newest,
            (newest.c.fleet == RolloutRow.fleet) & (newest.c.at == RolloutRow.created_at_ms),
        )
        found: set[tuple[str, str, str, str]] = set()
        with self._db.read() as session:
            for q in (stmt.where(~RolloutRow.finished), latest):
                found.update((r, f, rel, p) for r, f, rel, p in session.execute(q))
        return sorted(found)

    def aborted(self) -> list[tuple[str, int]]:
        """(fleet, rollouts aborted) - a fleet rollback's own record is no abort."""
        stmt = (
            select(RolloutRow.fleet, func.count())
            .where(RolloutRow.phase.in_(_ABORTED), RolloutRow.strategy != ROLLBACK)
            .group_by(RolloutRow.fleet)
        )
        with self._db.read() as session:
            return [(f, int(n)) for f, n in session.execute(stmt)]
