"""The rollouts lease on a real PostgreSQL shared by replicas on different hosts: whose clock
decides when a lease lapses, and two replicas claiming it at once on a fresh database.

Replicas' wall clocks disagree (hosts drift, NTP steps); the lease must not: a replica whose
clock runs ahead must not take a lease its live holder keeps renewing, and one whose clock runs
behind must still take over within the lease's time once the holder stops."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from edgefleet.controller.db import Database
from edgefleet.controller.leasing import Lease
from tests.controller import databases, support

PG = os.environ.get(databases.ENV) or "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
HOUR_MS = 3_600_000


@pytest.fixture
def db(monkeypatch: pytest.MonkeyPatch) -> Iterator[Database]:
    monkeypatch.setenv(databases.ENV, PG)
    database = Database(databases.fresh_url())  # skips when no PostgreSQL answers
    database.create_schema()
    yield database
    database.dispose()
    databases.drop_all()


def clock(skew_ms: int) -> Callable[[], int]:
    return lambda: int(time.time() * 1000) + skew_ms


def test_a_replica_whose_clock_runs_ahead_does_not_take_a_live_lease(db: Database) -> None:
    holder = Lease(db, holder="a", ttl_s=5.0, clock_ms=clock(0))
    ahead = Lease(db, holder="b", ttl_s=5.0, clock_ms=clock(HOUR_MS))
    assert holder.held()
    for _ in range(3):
        assert not ahead.held(), "a clock an hour ahead took a lease renewed a moment ago"
        assert holder.held()
    assert holder.epoch == 1


def test_a_replica_whose_clock_runs_behind_takes_over_once_the_lease_lapses(
    db: Database,
) -> None:
    holder = Lease(db, holder="a", ttl_s=1.0, clock_ms=clock(0))
    behind = Lease(db, holder="b", ttl_s=1.0, clock_ms=clock(-HOUR_MS))
    assert holder.held()
    assert not behind.held()
    # The holder stops renewing (it died): the lease lapses a second later, by the database's
    # clock; the bound only needs to be far below the hour this replica's clock is behind.
    support.eventually(behind.held, timeout=60, what="the lease to pass to the replica behind")
    assert behind.epoch == 2
    assert not holder.held()


def test_replicas_claiming_a_fresh_lease_at_once_agree_on_one_holder(db: Database) -> None:
    for round_ in range(10):
        leases = [
            Lease(db, holder=f"r{i}", name=f"race-{round_}", clock_ms=clock(0)) for i in range(4)
        ]
        start = threading.Barrier(len(leases))
        answers: dict[str, bool] = {}
        errors: dict[str, BaseException] = {}

        def claim(lease: Lease) -> None:
            start.wait()
            try:
                answers[lease.holder] = lease.held()
            except BaseException as exc:
                errors[lease.holder] = exc

        threads = [threading.Thread(target=claim, args=(lease,)) for lease in leases]
        for th in threads:
            th.start()
        for th in threads:
            th.join(30)
        assert not errors, f"round {round_}: a claim failed: {errors}"
        assert sorted(answers.values()) == [False, False, False, True], answers
