"""Several controllers on one database: one leader drives rollouts, every change is serialised.

Any number of ``edge-controller`` replicas may share one PostgreSQL. All of them serve the API
and ingest device reports; exactly one at a time, the holder of the ``rollouts`` lease, runs the
rollout driver (steps, re-sends, anti-entropy). The lease is a row (holder, expiry, epoch) that
the leader renews every tick; when it lapses (the leader died or hangs) another replica takes it
over, with a new epoch, within ``ttl_s``. Lapsing is judged by the database server's clock, the
one clock all replicas share.

Every change to rollouts and desired states (a driver step, a deploy, pause, abort, rollback)
also runs under ``DbMutex``, a lock all replicas share (PostgreSQL: a session advisory lock;
SQLite: a file lock beside the database), so two replicas never read the same generations and
write different desired states for them: a device never gets two desired states with one
generation, and no step is taken twice.
"""

from __future__ import annotations

import fcntl
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import TracebackType

from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert

from edgefleet.controller.db import Database, LeaseRow

log = logging.getLogger(__name__)

_MUTEX_KEY = 0x6566_726F  # "efro": the advisory lock of rollout changes
# The database server's clock, epoch ms (clock_timestamp: now, not the transaction's start).
_DB_NOW_MS = text("SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)")


class Lease:
    """``held()`` takes or renews the lease and says whether this replica holds it now.

    Expiry is judged by the database server's clock on PostgreSQL (replicas on other hosts
    may disagree about the time by more than the lease lasts), by ``clock_ms`` on SQLite."""

    def __init__(
        self,
        db: Database,
        *,
        holder: str,
        name: str = "rollouts",
        ttl_s: float = 8.0,
        clock_ms: Callable[[], int],
    ) -> None:
        self._db = db
        self.holder = holder
        self.name = name
        self._ttl_ms = int(ttl_s * 1000)
        self._clock_ms = clock_ms
        self.epoch = 0
        self._was: bool | None = None  # None: not asked yet (the first answer is logged)

    def held(self) -> bool:
        with self._db.write() as session:
            stmt = select(LeaseRow).where(LeaseRow.name == self.name)
            if not self._db.is_sqlite:
                # The row exists before it is locked, so replicas claiming a fresh lease at
                # once queue on its lock rather than race to insert it.
                session.execute(
                    pg_insert(LeaseRow)
                    .values(name=self.name, holder=self.holder, expires_at_ms=0, epoch=0)
                    .on_conflict_do_nothing(index_elements=[LeaseRow.name])
                )
                stmt = stmt.with_for_update()
            row = session.scalars(stmt).one_or_none()
            # Replicas on several hosts disagree about the time; the database server's clock
            # (read once the row is locked) is the one they share. SQLite: one host, its clock.
            now = (
                self._clock_ms() if self._db.is_sqlite else session.execute(_DB_NOW_MS).scalar_one()
            )
            if row is None:
                row = LeaseRow(name=self.name, holder=self.holder, expires_at_ms=0, epoch=0)
                session.add(row)
            mine = row.holder == self.holder and row.expires_at_ms > now
            if not mine and row.expires_at_ms > now:
                held, epoch, by = False, row.epoch, row.holder
            else:
                if not mine:
                    row.holder, row.epoch = self.holder, row.epoch + 1
                row.expires_at_ms = now + self._ttl_ms
                held, epoch, by = True, row.epoch, self.holder
        if held != self._was:
            if held:
                log.info("took the %s lease (epoch %d): this controller drives", self.name, epoch)
            else:
                log.info("the %s lease is held by %s: this controller stands by", self.name, by)
        self._was, self.epoch = held, epoch
        return held

    def release(self) -> None:
        """Give the lease up now (a clean stop), so another replica need not wait for expiry."""
        with self._db.write() as session:
            row = session.get(LeaseRow, self.name)
            if row is not None and row.holder == self.holder:
                row.expires_at_ms = 0
        self._was = None


class DbMutex:
    """One lock for every replica on this database (``with mutex: ...``); re-entrant within a
    thread, as ``threading.RLock`` (which it also takes, for the threads of this process)."""

    def __init__(self, db: Database, *, lock_file: Path) -> None:
        self._db = db
        self._lock_file = lock_file
        self._local = threading.RLock()
        self._depth = 0
        self._held: ExitStack | None = None

    def __enter__(self) -> DbMutex:
        self._local.acquire()
        if self._depth == 0:
            stack = ExitStack()
            try:
                stack.enter_context(self._take())
            except BaseException:
                self._local.release()
                raise
            self._held = stack
        self._depth += 1
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._depth -= 1
        try:
            if self._depth == 0 and self._held is not None:
                held, self._held = self._held, None
                held.close()
        finally:
            self._local.release()

    @contextmanager
    def _take(self) -> Iterator[None]:
        if self._db.is_sqlite:
            self._lock_file.parent.mkdir(parents=True, exist_ok=True)
            with self._lock_file.open("a") as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(f, fcntl.LOCK_UN)
            return
        with self._db.engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _MUTEX_KEY})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _MUTEX_KEY})
                conn.commit()
