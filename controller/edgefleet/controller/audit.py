"""The audit log: every operator call that changes something, and every refused call.

``auth`` writes one entry per such call once its outcome is known (ok, denied, error); the
log is read back newest first by ``ListAudit`` (``edgectl audit``). It keeps the newest
``MAX_ENTRIES`` rows, so a caller hammering the API with bad tokens cannot fill the disk.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import delete, select

from edgefleet.controller.db import AuditRow, Database

log = logging.getLogger(__name__)

MAX_ENTRIES = 100_000
PRUNE_EVERY = 1000
_TEXT = 1000  # longest detail kept


class Outcome(StrEnum):
    OK = "ok"
    DENIED = "denied"
    ERROR = "error"


@dataclass(frozen=True)
class AuditEntry:
    at_ms: int
    operator: str
    """Empty when the caller had no valid token."""
    role: str
    method: str
    target: str
    """The fleet, release, model or operator the call was about."""
    fleet: str
    outcome: Outcome
    detail: str
    """Why it was denied or failed."""
    peer: str


class AuditLog:
    def __init__(
        self, db: Database, *, clock: Callable[[], int], max_entries: int = MAX_ENTRIES
    ) -> None:
        self._db = db
        self._clock = clock
        self._max = max_entries
        self._written = 0

    def record(
        self,
        *,
        operator: str,
        role: str,
        method: str,
        target: str,
        fleet: str,
        outcome: Outcome,
        detail: str = "",
        peer: str = "",
    ) -> None:
        row = AuditRow(
            at_ms=self._clock(),
            operator=operator[:63],
            role=role,
            method=method[:64],
            target=target[:200],
            fleet=fleet[:63],
            outcome=outcome.value,
            detail=detail[:_TEXT],
            peer=peer[:255],
        )
        with self._db.write() as session:
            session.add(row)
        self._written += 1
        if self._written % PRUNE_EVERY == 0:
            self._prune()

    def list_entries(self, *, limit: int, fleets: tuple[str, ...] = ()) -> list[AuditEntry]:
        """Newest first; ``fleets`` non-empty = only entries about those fleets."""
        query = select(AuditRow).order_by(AuditRow.id.desc()).limit(limit)
        if fleets:
            query = query.where(AuditRow.fleet.in_(fleets))
        with self._db.read() as session:
            return [_entry(r) for r in session.scalars(query)]

    def _prune(self) -> None:
        with self._db.write() as session:
            cutoff = session.scalar(
                select(AuditRow.id).order_by(AuditRow.id.desc()).offset(self._max).limit(1)
            )
            if cutoff is not None:
                session.execute(delete(AuditRow).where(AuditRow.id <= cutoff))
                log.info("audit log: dropped entries up to %d (keeping %d)", cutoff, self._max)


def _entry(row: AuditRow) -> AuditEntry:
    return AuditEntry(
        at_ms=row.at_ms,
        operator=row.operator,
        role=row.role,
        method=row.method,
        target=row.target,
        fleet=row.fleet,
        outcome=Outcome(row.outcome),
        detail=row.detail,
        peer=row.peer,
    )
