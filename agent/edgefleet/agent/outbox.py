"""The agent's persisted outbox: events survive a crash, a power cut and a broker outage.

Events used to go straight to paho, whose queue lives in memory: a kill between persisting a
step and publishing its event lost the event. Now an event is written here first (SQLite in the
data dir, ``synchronous=FULL``), *before* the state change it reports, and a named thread
(``agent-outbox``) drains the box in order whenever the broker is connected, deleting each
message once the broker acknowledged it (PUBACK). Delivery is at least once: a message sent
just before a disconnect may arrive twice, so each event carries its outbox position (``seq``)
and the controller drops one it already holds.

The same file keeps the status sequence: every status the device sends carries a number that
only grows, across restarts (``max(last + 1, wall clock in µs)``, so a wiped data dir still
counts up and a clock that went back does not), and the controller keeps the highest.

Bounded: beyond ``max_messages`` the oldest are dropped (logged, and counted in the same file,
so the count survives a restart: ``dropped``, the agent's ``edgefleet_outbox_dropped_total``),
never the newest, and telemetry before events: a long outage costs old samples first, an
event only when the box holds nothing else. Telemetry goes through it too: what a device
measured while cut off reaches the controller once it is back, up to the bound.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

PUBACK_WAIT_S = 10.0
BATCH = 64
EXPENDABLE = "%/telemetry"  # topics (SQL LIKE) dropped first when the box is full

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class Acked(Protocol):
    """What paho's ``publish`` returns (``MQTTMessageInfo``), as far as the drain needs it."""

    def wait_for_publish(self, timeout: float | None = None) -> None: ...

    def is_published(self) -> bool: ...


class Sink(Protocol):
    """The MQTT session as the outbox drains into it."""

    @property
    def connected(self) -> bool: ...

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> Acked: ...


@dataclass(frozen=True)
class Message:
    seq: int
    topic: str
    payload: bytes
    qos: int
    retain: bool


def _wall_us() -> int:
    return time.time_ns() // 1000


class Outbox:
    def __init__(
        self,
        path: Path,
        *,
        max_messages: int = 10_000,
        clock_us: Callable[[], int] = _wall_us,
    ) -> None:
        self.path = path
        self._max = max(1, max_messages)
        self._clock_us = clock_us
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = FULL")
        self._db.executescript(_SCHEMA)
        row = self._db.execute("SELECT value FROM counters WHERE name = 'dropped'").fetchone()
        self.dropped = int(row[0]) if row is not None else 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # writing (any thread)

    def put(self, topic: str, build: Callable[[int], bytes], *, qos: int = 1) -> int:
        """Store one message durably; ``build(seq)`` makes its payload. Returns its seq."""
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                seq = int(cur.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM outbox").fetchone()[0])
                seen = cur.execute(
                    "SELECT seq FROM sqlite_sequence WHERE name = 'outbox'"
                ).fetchone()
                if seen is not None:
                    seq = max(seq, int(seen[0]) + 1)
                cur.execute(
                    "INSERT INTO outbox (seq, topic, payload, qos, retain) VALUES (?, ?, ?, ?, 0)",
                    (seq, topic, build(seq), qos),
                )
                over = self._count(cur) - self._max
                if over > 0:
                    cur.execute(
                        "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox "
                        "ORDER BY topic LIKE ? DESC, seq LIMIT ?)",
                        (EXPENDABLE, over),
                    )
                    cur.execute(
                        "INSERT INTO counters (name, value) VALUES ('dropped', ?) "
                        "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                        (over,),
                    )
                    self.dropped += over
                    log.warning("outbox full: dropped the %d oldest messages", over)
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        self._wake.set()
        return seq

    def next_status_seq(self) -> int:
        """The next status number: above every one handed out before, here or in a past life."""
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                row = cur.execute("SELECT value FROM counters WHERE name = 'status'").fetchone()
                last = int(row[0]) if row is not None else 0
                seq = max(last + 1, self._clock_us())
                cur.execute(
                    "INSERT INTO counters (name, value) VALUES ('status', ?) "
                    "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                    (seq,),
                )
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        return seq

    def pending(self, limit: int = BATCH) -> list[Message]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, topic, payload, qos, retain FROM outbox ORDER BY seq LIMIT ?",
                (limit,),
            ).fetchall()
        return [Message(int(s), str(t), bytes(p), int(q), bool(r)) for s, t, p, q, r in rows]

    def __len__(self) -> int:
        with self._lock:
            return self._count(self._db.cursor())

    def delete(self, seqs: list[int]) -> None:
        if not seqs:
            return
        with self._lock:
            self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])

    @staticmethod
    def _count(cur: sqlite3.Cursor) -> int:
        return int(cur.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    # draining (the agent-outbox thread)

    def wake(self) -> None:
        """Look at the box now (called on every (re)connect)."""
        self._wake.set()

    def start(self, sink: Sink) -> None:
        self._thread = threading.Thread(
            target=self._run, args=(sink,), name="agent-outbox", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout)
        with self._lock:
            self._db.close()

    def drain_once(self, sink: Sink) -> int:
        """Send what is pending, in order, while connected; delete what the broker acked.
        Returns how many were acknowledged. Stops at the first message not acknowledged (the
        rest waits for the next connect, so order holds)."""
        done = 0
        while sink.connected and not self._stop.is_set():
            batch = self.pending()
            if not batch:
                break
            infos = []
            for m in batch:
                try:
                    infos.append((m, sink.publish(m.topic, m.payload, qos=m.qos, retain=m.retain)))
                except Exception as exc:  # paho refused to queue it: try again later
                    log.info("outbox: could not queue %s: %s", m.topic, exc)
                    break
            acked: list[int] = []
            for m, info in infos:
                try:
                    info.wait_for_publish(timeout=PUBACK_WAIT_S)
                except (RuntimeError, ValueError):
                    break
                if not info.is_published():
                    break
                acked.append(m.seq)
            self.delete(acked)
            done += len(acked)
            if len(acked) < len(batch):
                break
        return done

    def _run(self, sink: Sink) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=5.0)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.drain_once(sink)
            except Exception:
                log.exception("outbox drain failed; trying again")
