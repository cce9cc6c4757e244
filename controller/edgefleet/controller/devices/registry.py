"""Devices as the controller knows them: what they report (status, presence, telemetry, events)
and what the controller last asked of them (desired generation), joined for ListDevices.

A device is registered by its first status; a status whose ``seq`` is not above the one held is
a stale copy and changes nothing; an outbox event already stored (same device, seq, time) is
dropped, so at-least-once delivery shows each event once. Presence, telemetry and events that
come before the first status are kept under its id and show once it registers. Retained
messages (replayed by the broker when the controller connects) say nothing about when a
device was last seen, so they do not move ``last_seen``.

The registry (``enrollment``), not the device, owns fleet membership: a status or presence of
an enrolled device that names another fleet is refused with a ``fleet_refused`` event, so a
device cannot join another fleet's rollout or failover. Reports of a revoked device are
dropped; with ``enrolled_only`` so are those of devices the registry does not know, so garbage
on the broker cannot register a device. Refusals are counted by reason (``refused``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from edgefleet.common import types as t
from edgefleet.controller.db import (
    Database,
    DesiredRow,
    DeviceRow,
    EnrolledDeviceRow,
    EventRow,
    PresenceRow,
    TelemetryRow,
)
from edgefleet.controller.devices import rows as devicerows
from edgefleet.controller.devices.rows import DeviceView
from edgefleet.controller.enrollment import IdentityState

Report = t.DeviceStatus | t.Presence | t.Telemetry | t.DeviceEvent


@dataclass(frozen=True)
class Page:
    """One page of a device listing (``DeviceRegistry.page``)."""

    devices: list[DeviceView]
    next_after: tuple[str, str] | None  # (fleet, device id) of the last one; None: no more
    total: int  # devices matching, all pages together


@dataclass(frozen=True)
class Incoming:
    """One decoded, checked device message on its way to the database."""

    report: Report
    retained: bool = False


class DeviceRegistry:
    def __init__(
        self,
        db: Database,
        *,
        clock: Callable[[], int],
        events_per_device: int = 1000,
        enrolled_only: bool = False,
        refused: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self._db = db
        self._clock = clock
        self._keep = max(1, events_per_device)
        self._enrolled_only = enrolled_only
        self._refused = refused
        """Called with the reason of each refused report: revoked, not_enrolled, wrong_fleet."""

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
            registry = _registered(session, ids)
            told: set[str] = set()  # devices refused for their fleet in this batch (one event)
            for item in batch:
                reason = self._refusal(item.report, registry)
                if reason == _WRONG_FLEET and item.report.device_id not in told:
                    told.add(item.report.device_id)
                    session.add(_fleet_refused(item.report, registry, now_ms=now))
                    event_devices.add(item.report.device_id)
                if reason:
                    self._refused(reason)
                    continue
                _apply(session, rows, item, now_ms=now)
                if isinstance(item.report, t.DeviceEvent):
                    event_devices.add(item.report.device_id)
            devicerows.trim_events_of(session, event_devices, keep=self._keep)

    def _refusal(self, report: Report, registry: dict[str, tuple[str, str]]) -> str:
        """Why ``report`` must change nothing ("" = it may): the registry's word beats the
        device's."""
        entry = registry.get(report.device_id)
        if entry is None:
            return _NOT_ENROLLED if self._enrolled_only else ""
        fleet, state = entry
        if state == IdentityState.REVOKED.value:
            return _REVOKED
        if isinstance(report, t.DeviceStatus | t.Presence) and report.fleet != fleet:
            return _WRONG_FLEET
        return ""

    def list_devices(
        self, fleet: str = "", *, limit: int = 0, after: tuple[str, str] | None = None
    ) -> list[DeviceView]:
        """The devices of ``fleet`` (all fleets: ""), by (fleet, device id); at most ``limit``
        (0 = all) of those after ``after`` (a (fleet, device id) key, None = from the start)."""
        stmt = (
            select(DeviceRow, PresenceRow, TelemetryRow, DesiredRow)
            .outerjoin(PresenceRow, PresenceRow.device_id == DeviceRow.device_id)
            .outerjoin(TelemetryRow, TelemetryRow.device_id == DeviceRow.device_id)
            .outerjoin(DesiredRow, DesiredRow.device_id == DeviceRow.device_id)
            .order_by(DeviceRow.fleet, DeviceRow.device_id)
        )
        if fleet:
            stmt = stmt.where(DeviceRow.fleet == fleet)
        if after is not None:
            f, d = after
            stmt = stmt.where(
                or_(DeviceRow.fleet > f, and_(DeviceRow.fleet == f, DeviceRow.device_id > d))
            )
        if limit > 0:
            stmt = stmt.limit(limit)
        with self._db.read() as session:
            return [devicerows.view(*row) for row in session.execute(stmt)]

    def page(self, fleet: str = "", *, size: int, after: tuple[str, str] | None = None) -> Page:
        """One page of ``list_devices``: ``size`` devices, the key to go on from (None: this
        was the last page) and how many devices match, all pages together."""
        views = self.list_devices(fleet, limit=size + 1, after=after)
        more = len(views) > size
        views = views[:size]
        count = select(func.count()).select_from(DeviceRow)
        if fleet:
            count = count.where(DeviceRow.fleet == fleet)
        with self._db.read() as session:
            total = int(session.scalar(count) or 0)
        last = views[-1] if more and views else None
        return Page(views, (last.fleet, last.device_id) if last is not None else None, total)

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


_REVOKED = "revoked"
_NOT_ENROLLED = "not_enrolled"
_WRONG_FLEET = "wrong_fleet"
FLEET_REFUSED = "fleet_refused"
"""The event kind the controller writes when a device names a fleet it is not enrolled in."""


def _registered(session: Session, device_ids: set[str]) -> dict[str, tuple[str, str]]:
    """The batch's enrolled devices: device id -> (fleet, state)."""
    stmt = select(EnrolledDeviceRow.device_id, EnrolledDeviceRow.fleet, EnrolledDeviceRow.state)
    stmt = stmt.where(EnrolledDeviceRow.device_id.in_(sorted(device_ids)))
    return {d: (f, st) for d, f, st in session.execute(stmt)}


def _fleet_refused(
    report: Report, registry: dict[str, tuple[str, str]], *, now_ms: int
) -> EventRow:
    assert isinstance(report, t.DeviceStatus | t.Presence)
    enrolled = registry[report.device_id][0]
    return devicerows.event_row(
        t.DeviceEvent(
            device_id=report.device_id,
            kind=FLEET_REFUSED,
            message=f"reported fleet {report.fleet!r} but is enrolled in {enrolled!r}; refused",
            at_ms=now_ms,
        ),
        now_ms=now_ms,
    )


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
