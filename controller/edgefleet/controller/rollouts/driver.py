"""The rollout driver: a named background loop (``loops.StoppableLoop``) that steps every
unfinished rollout each tick.

With several controller replicas on one database only the holder of the ``rollouts`` lease
drives (``leasing``); the others renew their claim each tick and stand by. All state lives in
the database, so the driver itself holds none: a controller killed in the
middle of a rollout starts a new driver that picks the rollout up where the last step left it
(and first re-sends the desired states that rollout still waits for).
"""

from __future__ import annotations

import logging
import threading
import time

from edgefleet.common.loops import StoppableLoop
from edgefleet.controller.leasing import Lease
from edgefleet.controller.rollouts.shell import Rollouts

log = logging.getLogger(__name__)


class RolloutDriver:
    """``reconnected`` is set by the MQTT session on every (re)connect; the driver then
    publishes every device's desired state again (the broker may have restarted without its
    retained messages). Every ``lag_check_s`` it re-sends to devices that lag behind theirs."""

    def __init__(
        self,
        rollouts: Rollouts,
        *,
        tick_s: float,
        reconnected: threading.Event | None = None,
        lag_check_s: float = 5.0,
        lease: Lease | None = None,
    ) -> None:
        self._rollouts = rollouts
        self._lease = lease
        self._tick_s = tick_s
        self._reconnected = reconnected or threading.Event()
        self._lag_check_s = lag_check_s
        self._leading = False
        self._lag_checked = 0.0  # the last look for lagging devices (monotonic): from start
        self._loop = StoppableLoop(
            self._step, name="controller-rollouts", join_timeout_s=5.0, last=self._give_up
        )

    def start(self) -> None:
        self._lag_checked = time.monotonic()
        self._loop.start()

    def stop(self) -> None:
        """Finish the tick under way, then end the thread (and give the lease up)."""
        self._loop.stop()

    def _step(self) -> float:
        """One tick: drive (when this replica led at the last look), then look at the lease
        again; the loop waits ``tick_s`` between two."""
        if self._leading:
            self._drive()
        try:
            was, self._leading = self._leading, self._lease is None or self._lease.held()
        except Exception:  # the database is away: drive nothing until it is back
            log.exception("could not renew the rollouts lease")
            was, self._leading = self._leading, False
        if self._leading and not was:
            self._take_over()
        return self._tick_s

    def _drive(self) -> None:
        try:
            if self._reconnected.is_set():
                self._reconnected.clear()
                self._rollouts.republish()
            elif time.monotonic() - self._lag_checked >= self._lag_check_s:
                self._lag_checked = time.monotonic()
                self._rollouts.republish(lagging_only=True)
        except Exception:
            log.exception("re-publishing desired states failed")
        try:
            self._rollouts.tick()
        except Exception:  # the next tick tries again; a dead driver would stall every rollout
            log.exception("rollout tick failed")

    def _give_up(self) -> None:
        """On the loop's thread, after its last tick."""
        if self._lease is not None and self._leading:
            try:
                self._lease.release()
            except Exception:
                log.exception("could not give the rollouts lease up; it lapses by itself")

    def _take_over(self) -> None:
        """On becoming the driver (at start, or taking over from a replica that died): publish
        again what unfinished rollouts wait for, and every device's desired state."""
        self._reconnected.clear()
        try:
            self._rollouts.resend_pending()
            self._rollouts.republish()
        except Exception:
            log.exception("re-sending the desired states of unfinished rollouts failed")
