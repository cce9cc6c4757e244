"""Device reports <-> ORM rows: the column-by-column copying that ``registry`` would drown in,
and the ``DeviceView`` it builds from them (one device as ListDevices shows it)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from edgefleet.common import types as t
from edgefleet.controller.db import DesiredRow, DeviceRow, EventRow, PresenceRow, TelemetryRow


@dataclass(frozen=True)
class DeviceView:
    """One device as ListDevices shows it: last status, presence, telemetry and desired state."""

    device_id: str
    fleet: str
    labels: Mapping[str, str] = field(default_factory=dict)
    phase: t.InstallPhase | None = None
    active_release: str = ""
    previous_release: str = ""
    target_release: str = ""
    generation_applied: int = 0
    generation_desired: int = 0
    desired_release: str = ""
    last_error: str = ""
    online: bool = False
    predict_endpoint: str = ""
    last_seen_ms: int = 0
    telemetry: t.Telemetry | None = None
    telemetry_received_ms: int = 0  # by the controller's clock, whatever the device's says
    container: t.ContainerStatus | None = None  # the active release's, as last reported
    hardware: t.Hardware | None = None  # as the device's agent probed it at start
    active_provider: str = ""  # the execution provider its active release runs on
    provider_fallback: str = ""  # why not the release's first preference ("": it is)
    active_variant: str = ""  # the active release's model variant it runs ("": the default)


def is_stale(row: DeviceRow, s: t.DeviceStatus) -> bool:
    """An older status than the one held (by the device's ``seq``; 0 = an agent that does not
    count, always taken)."""
    return bool(s.seq) and s.seq <= (row.status_seq or 0)


def set_status(row: DeviceRow, s: t.DeviceStatus) -> None:
    row.status_seq = s.seq
    row.fleet = s.fleet
    row.labels = dict(s.labels)
    row.phase = s.phase.value
    row.active_release = s.active_release
    row.previous_release = s.previous_release
    row.target_release = s.target_release
    row.generation_applied = s.generation_applied
    row.last_error = s.last_error
    row.predict_endpoint = s.predict_endpoint
    row.agent_version = s.agent_version
    row.active_manifest_digest = s.active_manifest_digest
    row.container = asdict(s.container) if s.container is not None else None
    if s.hardware is not None:  # an older agent's status says nothing: keep what is known
        row.hardware = asdict(s.hardware)
    row.active_provider = s.active_provider
    row.provider_fallback = s.provider_fallback
    row.active_variant = s.active_variant
    if s.runtimes:  # an older agent's status names none: keep what is known
        row.runtimes = list(s.runtimes)
    row.status_at_ms = s.at_ms


def set_presence(row: PresenceRow, p: t.Presence, *, now_ms: int) -> None:
    row.fleet = p.fleet
    row.online = p.online
    row.predict_endpoint = p.predict_endpoint
    row.active_release = p.active_release
    row.at_ms = p.at_ms
    row.received_ms = now_ms


def set_telemetry(row: TelemetryRow, x: t.Telemetry, *, now_ms: int) -> None:
    """Keep the newest sample: an older one (a device's outbox replaying what it measured while
    cut off, or a redelivered copy) arrives after a newer one only when redelivered."""
    if row.at_ms is not None and x.at_ms < row.at_ms:
        return
    row.release = x.release
    row.window_s = x.window_s
    row.requests = x.requests
    row.errors = x.errors
    row.refused = x.refused
    row.p50_ms = x.p50_ms
    row.p95_ms = x.p95_ms
    row.p99_ms = x.p99_ms
    row.power_w = x.power_w
    row.energy_per_inference_j = x.energy_per_inference_j
    row.cpu_percent = x.cpu_percent
    row.memory_bytes = x.memory_bytes
    row.at_ms = x.at_ms
    row.received_ms = now_ms


def event_row(e: t.DeviceEvent, *, now_ms: int) -> EventRow:
    return EventRow(
        device_id=e.device_id,
        kind=e.kind,
        release=e.release,
        generation=e.generation,
        phase=e.phase.value if e.phase is not None else None,
        message=e.message,
        at_ms=e.at_ms,
        received_ms=now_ms,
        seq=e.seq,
    )


def trim_events_of(session: Session, device_ids: set[str], *, keep: int) -> None:
    """Delete all but the newest ``keep`` events of each of ``device_ids``: one query counts
    them all, and only a device over ``keep`` costs a delete (a batch of 1,000 devices' events
    is one SELECT, not two statements per device)."""
    if not device_ids:
        return
    session.flush()
    stmt = (
        select(EventRow.device_id)
        .where(EventRow.device_id.in_(sorted(device_ids)))
        .group_by(EventRow.device_id)
        .having(func.count() > keep)
    )
    for device_id in session.scalars(stmt).all():
        trim_events(session, device_id, keep=keep)


def trim_events(session: Session, device_id: str, *, keep: int) -> None:
    """Delete all but the newest ``keep`` events of one device."""
    session.flush()
    oldest_kept = session.scalar(
        select(EventRow.id)
        .where(EventRow.device_id == device_id)
        .order_by(EventRow.id.desc())
        .offset(keep - 1)
        .limit(1)
    )
    if oldest_kept is not None:
        session.execute(
            delete(EventRow).where(EventRow.device_id == device_id, EventRow.id < oldest_kept)
        )


def event(row: EventRow) -> t.DeviceEvent:
    return t.DeviceEvent(
        device_id=row.device_id,
        kind=row.kind,
        message=row.message,
        release=row.release,
        generation=row.generation,
        phase=t.InstallPhase(row.phase) if row.phase else None,
        at_ms=row.at_ms,
    )


def telemetry(row: TelemetryRow) -> t.Telemetry:
    return t.Telemetry(
        device_id=row.device_id,
        release=row.release,
        window_s=row.window_s,
        requests=row.requests,
        errors=row.errors,
        refused=row.refused or 0,
        p50_ms=row.p50_ms,
        p95_ms=row.p95_ms,
        p99_ms=row.p99_ms,
        power_w=row.power_w,
        energy_per_inference_j=row.energy_per_inference_j,
        cpu_percent=row.cpu_percent,
        memory_bytes=row.memory_bytes,
        at_ms=row.at_ms,
    )


def container(row: DeviceRow) -> t.ContainerStatus | None:
    """The stored container of a device's last status (None: none, or unreadable)."""
    if not row.container:
        return None
    try:
        return t.ContainerStatus(**row.container)
    except TypeError:  # stored by a controller with other fields: not worth failing a listing
        return None


def hardware(row: DeviceRow) -> t.Hardware | None:
    """The stored hardware of a device (None: not reported, or unreadable)."""
    if not row.hardware:
        return None
    h = dict(row.hardware)
    try:
        return t.Hardware(
            **{
                **h,
                "cpu_features": tuple(h.get("cpu_features", ())),
                "gpus": tuple(t.Gpu(**g) for g in h.get("gpus", ())),
                "providers": tuple(h.get("providers", ())),
            }
        )
    except TypeError:  # stored by a controller with other fields: not worth failing a listing
        return None


def view(
    d: DeviceRow,
    p: PresenceRow | None,
    x: TelemetryRow | None,
    desired: DesiredRow | None,
) -> DeviceView:
    return DeviceView(
        device_id=d.device_id,
        fleet=d.fleet,
        labels=dict(d.labels or {}),
        phase=t.InstallPhase(d.phase) if d.phase else None,
        active_release=d.active_release,
        previous_release=d.previous_release,
        target_release=d.target_release,
        generation_applied=d.generation_applied,
        generation_desired=desired.generation if desired is not None else 0,
        desired_release=desired.release if desired is not None else "",
        last_error=d.last_error,
        online=bool(p is not None and p.online),
        predict_endpoint=(p.predict_endpoint if p is not None else "") or d.predict_endpoint,
        last_seen_ms=d.last_seen_ms,
        telemetry=telemetry(x) if x is not None else None,
        telemetry_received_ms=x.received_ms if x is not None else 0,
        container=container(d),
        hardware=hardware(d),
        active_provider=d.active_provider or "",
        provider_fallback=d.provider_fallback or "",
        active_variant=d.active_variant or "",
    )
