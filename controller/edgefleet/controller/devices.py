"""Devices as the controller knows them: what they report (status, presence, telemetry, events)
and what the controller last asked of them (desired generation), joined for ListDevices.

A device is registered by its first status; a status whose ``seq`` is not above the one held is
a stale copy and changes nothing; an outbox event already stored (same device, seq, time) is
dropped, so at-least-once delivery shows each event once. Presence, telemetry and events that
come before the first status are kept under its id and show once it registers. Retained
messages (replayed by the broker when the controller connects) say nothing about when a
device was last seen, so they do not move ``last_seen``. Reports of a revoked device
(``enrollment``) are dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from edgefleet.common import types as t
from edgefleet.controller import devicerows
from edgefleet.controller.db import (
    Database,
    DesiredRow,
    DeviceRow,
    EnrolledDeviceRow,
    EventRow,
    PresenceRow,
    TelemetryRow,
)
from edgefleet.controller.enrollment import IdentityState
from edgefleet.controller.records import DeviceView

Report = t.DeviceStatus | t.Presence | t.Telemetry | t.DeviceEvent


@dataclass(frozen=True)
class Incoming:
    """One decoded, checked device message on its way to the database."""

    report: Report
    retained: bool = False


class DeviceStore:
    def __init__(
        self, db: Database, *, clock: Callable[[], int], events_per_device: int = 1000
    ) -> None:
        self._db = db
        self._clock = clock
        self._keep = max(1, events_per_device)

    def apply(self, batch: Sequence[Incoming]) -> None:
        """Write a batch of reports in one transaction.

        The batch's device, presence and telemetry rows are loaded with one query per table
        and autoflush is off, so a batch of N reports costs three SELECTs and one flush, not
        a SELECT and a flush per report.
        """
        now = self._clock()
        with self._db.write() as session, session.no_autoflush:
            ids = {item.report.device_id for item in batch}
            rows = _BatchRows(session, ids)
            rows.load_event_keys([i.report for i in batch if isinstance(i.report, t.DeviceEvent)])
            event_devices: set[str] = set()
            revoked = _revoked(session, ids)  # (``edgectl device revoke``): not heard any more
            for item in batch:
                if item.report.device_id in revoked:
                    continue
                _apply(session, rows, item, now_ms=now)
                if isinstance(item.report, t.DeviceEvent):
                    event_devices.add(item.report.device_id)
            for device_id in event_devices:
                devicerows.trim_events(session, device_id, keep=self._keep)

    def list_devices(self, fleet: str = "") -> list[DeviceView]:
        stmt = (
            select(DeviceRow, PresenceRow, TelemetryRow, DesiredRow)
            .outerjoin(PresenceRow, PresenceRow.device_id == DeviceRow.device_id)
            .outerjoin(TelemetryRow, TelemetryRow.device_id == DeviceRow.device_id)
            .outerjoin(DesiredRow, DesiredRow.device_id == DeviceRow.device_id)
            .order_by(DeviceRow.fleet, DeviceRow.device_id)
        )
        if fleet:
            stmt = stmt.where(DeviceRow.fleet == fleet)
        with self._db.read() as session:
            return [devicerows.view(*row) for row in session.execute(stmt)]

    def fleets(self) -> list[tuple[str, bool, int]]:
        """(fleet, online, devices) for the metrics gauge."""
        stmt = (
            select(DeviceRow.fleet, PresenceRow.online, func.count())
            .outerjoin(PresenceRow, PresenceRow.device_id == DeviceRow.device_id)
            .group_by(DeviceRow.fleet, PresenceRow.online)
        )
        with self._db.read() as session:
            return [(f, bool(online), int(n)) for f, online, n in session.execute(stmt)]

    def list_events(
        self, *, device_id: str = "", fleet: str = "", limit: int = 100
    ) -> list[t.DeviceEvent]:
        """The newest ``limit`` events, oldest first."""
        stmt = select(EventRow).order_by(EventRow.id.desc()).limit(limit)
        if device_id:
            stmt = stmt.where(EventRow.device_id == device_id)
        if fleet:
            members = select(DeviceRow.device_id).where(DeviceRow.fleet == fleet)
            stmt = stmt.where(EventRow.device_id.in_(members))
        with self._db.read() as session:
            rows = list(session.scalars(stmt))
        return [devicerows.event(r) for r in reversed(rows)]


def _revoked(session: Session, device_ids: set[str]) -> set[str]:
    stmt = select(EnrolledDeviceRow.device_id).where(
        EnrolledDeviceRow.device_id.in_(sorted(device_ids)),
        EnrolledDeviceRow.state == IdentityState.REVOKED.value,
    )
    return set(session.scalars(stmt))


class _BatchRows:
    """The rows one batch touches, by (table, device id); new rows are added to the session."""

    def __init__(self, session: Session, device_ids: set[str]) -> None:
        self._session = session
        self._rows: dict[tuple[type, str], object] = {}
        self.event_keys: set[tuple[str, int, int]] = set()
        ids = sorted(device_ids)
        for device in session.scalars(select(DeviceRow).where(DeviceRow.device_id.in_(ids))):
            self._rows[(DeviceRow, device.device_id)] = device
        for presence in session.scalars(select(PresenceRow).where(PresenceRow.device_id.in_(ids))):
            self._rows[(PresenceRow, presence.device_id)] = presence
        for telemetry in session.scalars(
            select(TelemetryRow).where(TelemetryRow.device_id.in_(ids))
        ):
            self._rows[(TelemetryRow, telemetry.device_id)] = telemetry

    def load_event_keys(self, events: Sequence[t.DeviceEvent]) -> None:
        """The (device, seq, at_ms) of this batch's outbox events already stored."""
        counted = [e for e in events if e.seq]
        if not counted:
            return
        stmt = select(EventRow.device_id, EventRow.seq, EventRow.at_ms).where(
            EventRow.device_id.in_(sorted({e.device_id for e in counted})),
            EventRow.seq.in_(sorted({e.seq for e in counted})),
        )
        self.event_keys = {(d, int(q), int(a)) for d, q, a in self._session.execute(stmt)}

    def is_new_event(self, e: t.DeviceEvent) -> bool:
        """False for an outbox event this controller already stored (redelivered)."""
        if not e.seq:
            return True
        key = (e.device_id, e.seq, e.at_ms)
        if key in self.event_keys:
            return False
        self.event_keys.add(key)
        return True

    def device(self, device_id: str) -> DeviceRow | None:
        row = self._rows.get((DeviceRow, device_id))
        return row if isinstance(row, DeviceRow) else None

    def add_device(self, row: DeviceRow) -> DeviceRow:
        self._session.add(row)
        self._rows[(DeviceRow, row.device_id)] = row
        return row

    def presence(self, device_id: str) -> PresenceRow:
        row = self._rows.get((PresenceRow, device_id))
        if not isinstance(row, PresenceRow):
            row = PresenceRow(device_id=device_id)
            self._session.add(row)
            self._rows[(PresenceRow, device_id)] = row
        return row

    def telemetry(self, device_id: str) -> TelemetryRow:
        row = self._rows.get((TelemetryRow, device_id))
        if not isinstance(row, TelemetryRow):
            row = TelemetryRow(device_id=device_id)
            self._session.add(row)
            self._rows[(TelemetryRow, device_id)] = row
        return row


def _apply(session: Session, rows: _BatchRows, item: Incoming, *, now_ms: int) -> None:
    report = item.report
    device = rows.device(report.device_id)
    if isinstance(report, t.DeviceStatus):
        if device is None:
            device = rows.add_device(
                DeviceRow(device_id=report.device_id, first_seen_ms=now_ms, last_seen_ms=now_ms)
            )
        if devicerows.is_stale(device, report):
            return  # a redelivered copy of an older status: the newer one stays
        devicerows.set_status(device, report)
    elif isinstance(report, t.Presence):
        devicerows.set_presence(rows.presence(report.device_id), report, now_ms=now_ms)
    elif isinstance(report, t.Telemetry):
        devicerows.set_telemetry(rows.telemetry(report.device_id), report, now_ms=now_ms)
    elif rows.is_new_event(report):
        session.add(devicerows.event_row(report, now_ms=now_ms))
    offline = isinstance(report, t.Presence) and not report.online
    if device is not None and not item.retained and not offline:
        device.last_seen_ms = max(device.last_seen_ms, now_ms)
