"""Rollouts in motion: the imperative shell around the pure engine (``rollouts.engine``).

Every change to a rollout - start, a driver tick, pause, resume, abort, fleet rollback - runs
under one lock and in the same order: load the rollout and the fleet's reports, let the engine
decide, seal the desired states it asks for (failing here writes nothing), persist the new
state and the new generations in one transaction, and only then publish. The lock also keeps
the publishes of two changes from overtaking each other, so the retained desired state of a
device is always its newest generation.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import TypeVar

from edgefleet.common.errors import NotFoundError, PermanentError
from edgefleet.controller.errors import FleetBusyError, RolloutStateError
from edgefleet.controller.rollouts import engine
from edgefleet.controller.rollouts.engine import SendDesired, TargetState
from edgefleet.controller.rollouts.history import Transition, transitions
from edgefleet.controller.rollouts.rows import ROLLBACK, RolloutRecord
from edgefleet.controller.rollouts.sender import Order, Sender
from edgefleet.controller.rollouts.store import Current, RolloutPage, RolloutStore
from edgefleet.controller.rollouts.strategy import Strategy

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class DeployTarget:
    device_id: str
    generation: int


@dataclass(frozen=True)
class Started:
    """What a deploy or a fleet rollback did at once."""

    rollout_id: str
    targets: tuple[DeployTarget, ...]  # desired states sent in the first step
    skipped: tuple[str, ...] = ()  # rollback: devices with no release to go back to


def new_rollout_id() -> str:
    return "ro-" + uuid.uuid4().hex[:12]


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


class Rollouts:
    def __init__(
        self,
        store: RolloutStore,
        sender: Sender,
        *,
        clock: Callable[[], float],
        new_id: Callable[[], str] = new_rollout_id,
        resend_after_s: float = 15.0,
        lock: AbstractContextManager[object] | None = None,
    ) -> None:
        self._store = store
        self._sender = sender
        self._clock = clock
        self._new_id = new_id
        self._resend_after_s = resend_after_s
        self._lag_seen: dict[str, tuple[int, float]] = {}  # device -> (generation, last sent)
        # Every change under one lock: this process's, or the one all replicas share.
        self._lock: AbstractContextManager[object] = lock or threading.RLock()

    def get(self, rollout_id: str) -> RolloutRecord:
        return self._store.load(rollout_id)

    def page(self, rollout_id: str, *, device_limit: int) -> RolloutPage:
        """The rollout with its first ``device_limit`` devices and all of them counted."""
        return self._store.page(rollout_id, device_limit=device_limit)

    def history(self, rollout_id: str, *, device_changes: int = 0) -> tuple[Transition, ...]:
        """What happened to the rollout, oldest first (``rollouts.history``); ``device_changes``
        > 0: only the newest that many device changes (phase changes and gates all)."""
        return self._store.history(rollout_id, device_changes=device_changes)

    def list_rollouts(self, fleet: str = "", *, limit: int = 20) -> list[RolloutRecord]:
        return self._store.list_rollouts(fleet, limit=limit)

    def list_pages(self, fleet: str = "", *, limit: int, device_limit: int) -> list[RolloutPage]:
        """The newest ``limit`` rollouts, each with its first ``device_limit`` devices."""
        return self._store.list_pages(fleet, limit=limit, device_limit=device_limit)

    def devices(self, fleet: str) -> list[str]:
        """The devices of ``fleet``; ``NotFoundError`` when it has none."""
        ids = self._store.fleet_devices(fleet)
        if not ids:
            raise NotFoundError("fleet", fleet)
        return ids

    def lacking(self, fleet: str, runtime: str) -> list[str]:
        """The devices of ``fleet`` whose agents do not offer ``runtime`` (sorted)."""
        offered = self._store.runtimes(self.devices(fleet))
        return sorted(d for d, runtimes in offered.items() if runtime not in runtimes)

    def start(self, *, fleet: str, release: str, strategy: Strategy) -> Started:
        """A new rollout of ``release`` to every device of ``fleet``, and its first step."""
        with self._lock:
            self._check_idle(fleet)
            ids = self.devices(fleet)
            now = self._clock()
            r = engine.start(self._new_id(), fleet, release, strategy, ids)
            r, commands = engine.step(r, self._store.reports(ids), now=now)
            rec = RolloutRecord(r, strategy.kind.value, _ms(now), _ms(now))
            rec, sent = self._apply(None, rec, commands)
        log.info(
            "rollout %s: %s to fleet %s (%s, %d devices), %s",
            rec.id,
            release,
            fleet,
            rec.kind,
            len(ids),
            rec.rollout.phase,
            extra={"rollout": rec.id, "fleet": fleet},
        )
        return Started(rec.id, _targets(sent))

    def rollback(self, fleet: str, *, to_release: str = "") -> Started:
        """Every device of ``fleet`` back to its previous release (or to ``to_release``), as a
        rollout record of its own; an active rollout of the fleet is aborted first."""
        with self._lock:
            ids = self.devices(fleet)
            previous = self._store.previous_releases(ids)
            goal = engine.rollback_goal(fleet, ids, previous, to_release=to_release)
            if isinstance(goal, engine.Refusal):
                raise PermanentError(goal.message)
            rollback_id = self._new_id()
            for other in self._store.unfinished_ids(fleet):
                rec = self._store.load(other)
                reports = self._store.reports(t.device_id for t in rec.rollout.targets)
                r, commands = engine.supersede(rec.rollout, reports, by=rollback_id)
                if r != rec.rollout or commands:
                    self._apply(rec, self._updated(rec, r), commands)
            now = self._clock()
            # Read after the superseded rollouts wrote theirs: generations stay above them.
            reports = self._store.reports(ids)
            r, commands = engine.fleet_rollback(
                rollback_id, fleet, goal, reports, to_release=to_release
            )
            rec, sent = self._apply(None, RolloutRecord(r, ROLLBACK, _ms(now), _ms(now)), commands)
        skipped = tuple(d for d in ids if d not in {c.device_id for c in sent})
        log.info(
            "rollback %s of fleet %s: %d devices sent back%s",
            rec.id,
            fleet,
            len(sent),
            f"; skipped (nothing to go back to): {', '.join(skipped)}" if skipped else "",
            extra={"rollout": rec.id, "fleet": fleet},
        )
        return Started(rec.id, _targets(sent), skipped)

    def tick(self) -> None:
        """One driver tick: re-send what paho refused, then step every unfinished rollout."""
        self._sender.retry()
        for rollout_id in self._store.unfinished_ids():
            try:
                with self._lock:
                    self._step(self._store.load(rollout_id))
            except Exception:
                log.exception("rollout %s: step failed", rollout_id, extra={"rollout": rollout_id})

    def resend_pending(self) -> None:
        """After a restart: publish again every desired state an unfinished rollout still waits
        for (a crash may have come between the commit and the publish). Same generation, so a
        device that has it already ignores it."""
        with self._lock:
            for rollout_id in self._store.unfinished_ids():
                rec = self._store.load(rollout_id)
                waiting = (TargetState.SENT, TargetState.ROLLING_BACK)
                gens = {
                    t.device_id: t.generation for t in rec.rollout.targets if t.state in waiting
                }
                for i in self._store.issued(rollout_id, gens) if gens else []:
                    sealed, _ = self._sender.seal(
                        [Order(i.device_id, i.release, i.generation)],
                        rollout_id=rollout_id,
                        fleet=rec.rollout.fleet,
                        issued_at_ms=i.issued_at_ms,
                    )
                    self._sender.publish(sealed)

    def republish(self, *, lagging_only: bool = False, now: float | None = None) -> int:
        """Anti-entropy: publish again every device's current desired state (after the
        controller (re)connected to the broker, which may have kept no retained message), or,
        with ``lagging_only``, those of devices still behind theirs for ``resend_after_s``.
        Same generation, same bytes: a device that has it ignores it. Returns how many went out."""
        with self._lock:
            rows = self._store.current_desired(lagging_only=lagging_only)
            if lagging_only:
                rows = self._due(rows, self._clock() if now is None else now)
            else:
                self._lag_seen.clear()
            # One seal per (rollout, fleet, issue time), not per device: each seal looks up
            # the key and the release (10,000 lagging devices: a handful of lookups).
            groups: dict[tuple[str, str, int], list[Order]] = {}
            for c in rows:
                key = (c.rollout_id, c.fleet, c.issued_at_ms)
                groups.setdefault(key, []).append(Order(c.device_id, c.release, c.generation))
            for (rollout_id, fleet, issued_at_ms), orders in groups.items():
                sealed, _ = self._sender.seal(
                    orders, rollout_id=rollout_id, fleet=fleet, issued_at_ms=issued_at_ms
                )
                self._sender.publish(sealed)
        if rows:
            log.info(
                "re-published the desired state of %d device(s)%s",
                len(rows),
                " that lag behind it" if lagging_only else "",
            )
        return len(rows)

    def _due(self, rows: Sequence[Current], now: float) -> list[Current]:
        """The lagging devices whose last (re)send of this generation is ``resend_after_s`` old;
        a lag first seen now starts its timer."""
        due, seen = [], {}
        for c in rows:
            generation, since = self._lag_seen.get(c.device_id, (c.generation, now))
            if generation != c.generation:
                since = now
            if now - since >= self._resend_after_s:
                due.append(c)
                since = now
            seen[c.device_id] = (c.generation, since)
        self._lag_seen = seen
        return due

    def pause(self, rollout_id: str) -> RolloutRecord:
        """``engine.pause``; a refusal is a ``RolloutStateError``."""
        with self._lock:
            return self._decide(rollout_id, engine.pause)[0]

    def resume(self, rollout_id: str) -> RolloutRecord:
        """``engine.resume``, then a step; a refusal is a ``RolloutStateError``."""
        with self._lock:
            rec, changed = self._decide(rollout_id, engine.resume)
            return self._step(rec) if changed else rec

    def abort(self, rollout_id: str) -> RolloutRecord:
        """``engine.abort``: roll back what the rollout touched, or, when it is rolling back
        already, stop waiting for devices that have not confirmed (their rollback stays
        retained); a refusal is a ``RolloutStateError``."""
        with self._lock:
            rec = self._store.load(rollout_id)
            reports = self._store.reports(t.device_id for t in rec.rollout.targets)
            r, commands = _decided(engine.abort(rec.rollout, reports), rollout_id)
            return self._apply(rec, self._updated(rec, r), commands)[0]

    # --- the shared steps, under the lock -------------------------------------------------

    def _check_idle(self, fleet: str) -> None:
        for rollout_id in self._store.unfinished_ids(fleet):
            rec = self._step(self._store.load(rollout_id))  # it may have just finished
            if refusal := engine.busy(rec.rollout):
                raise FleetBusyError(refusal.message, rollout_id=rec.id)

    def _decide(
        self, rollout_id: str, decide: Callable[[engine.Rollout], engine.Rollout | engine.Refusal]
    ) -> tuple[RolloutRecord, bool]:
        """The rollout as ``decide`` leaves it (persisted when it changed), and whether it did."""
        rec = self._store.load(rollout_id)
        r = _decided(decide(rec.rollout), rollout_id)
        if r == rec.rollout:
            return rec, False
        return self._apply(rec, self._updated(rec, r), [])[0], True

    def _step(self, rec: RolloutRecord) -> RolloutRecord:
        if rec.rollout.phase.finished:
            return rec
        now = self._clock()
        reports = self._store.reports(t.device_id for t in rec.rollout.targets)
        r, commands = engine.step(rec.rollout, reports, now=now)
        if r == rec.rollout and not commands:
            return rec
        return self._apply(rec, self._updated(rec, r), commands)[0]

    def _updated(self, rec: RolloutRecord, r: engine.Rollout) -> RolloutRecord:
        return replace(rec, rollout=r, updated_at_ms=_ms(self._clock()))

    def _apply(
        self, before: RolloutRecord | None, after: RolloutRecord, commands: list[SendDesired]
    ) -> tuple[RolloutRecord, list[SendDesired]]:
        """Seal, persist, publish; return what was persisted and the commands carried out."""
        issued_at = after.updated_at_ms
        orders = [Order(c.device_id, c.release, c.generation) for c in commands]
        sealed, missing = self._sender.seal(
            orders, rollout_id=after.id, fleet=after.rollout.fleet, issued_at_ms=issued_at
        )
        if missing:
            after, commands = _drop(after, commands, missing)
        changes = transitions(
            before.rollout if before is not None else None, after.rollout, at_ms=issued_at
        )
        self._store.save(before, after, commands, issued_at_ms=issued_at, transitions=changes)
        self._sender.publish(sealed)
        r = after.rollout
        if before is None or before.rollout.phase is not r.phase:
            log.info(
                "rollout %s: %s%s",
                r.id,
                r.phase,
                f" ({r.reason})" if r.reason else "",
                extra={"rollout": r.id, "fleet": r.fleet},
            )
        return after, commands


def _decided(decided: T | engine.Refusal, rollout_id: str) -> T:
    """What the engine decided, or its refusal raised as a ``RolloutStateError``."""
    if isinstance(decided, engine.Refusal):
        raise RolloutStateError(decided.message, rollout_id=rollout_id)
    return decided


def _drop(
    rec: RolloutRecord, commands: list[SendDesired], missing: dict[str, str]
) -> tuple[RolloutRecord, list[SendDesired]]:
    """Leave alone the devices whose rollback names a release this controller cannot sign."""
    for c in commands:
        if c.device_id in missing and not c.rollback:
            raise NotFoundError("release", c.release)  # checked at deploy; never written
    log.error(
        "rollout %s: cannot send back %s",
        rec.id,
        "; ".join(f"{d}: {why}" for d, why in missing.items()),
        extra={"rollout": rec.id},
    )
    targets = tuple(
        replace(t, state=TargetState.REVERTED, reason=_join(t.reason, missing[t.device_id]))
        if t.device_id in missing
        else t
        for t in rec.rollout.targets
    )
    kept = [c for c in commands if c.device_id not in missing]
    return replace(rec, rollout=replace(rec.rollout, targets=targets)), kept


def _targets(commands: Sequence[SendDesired]) -> tuple[DeployTarget, ...]:
    return tuple(DeployTarget(c.device_id, c.generation) for c in commands)


def _join(a: str, b: str) -> str:
    return f"{a}; {b}" if a else b
