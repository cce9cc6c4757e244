"""The rollout driver: a named background thread that steps every unfinished rollout each tick.

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
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="controller-rollouts", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Finish the tick under way, then end the thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        leading = False
        lag_checked = time.monotonic()
        while True:
            try:
                was, leading = leading, self._lease is None or self._lease.held()
            except Exception:  # the database is away: drive nothing until it is back
                log.exception("could not renew the rollouts lease")
                was, leading = leading, False
            if leading and not was:
                self._take_over()
            if self._stop.wait(self._tick_s):
                break
            if not leading:
                continue
            try:
                if self._reconnected.is_set():
                    self._reconnected.clear()
                    self._rollouts.republish()
                elif time.monotonic() - lag_checked >= self._lag_check_s:
                    lag_checked = time.monotonic()
                    self._rollouts.republish(lagging_only=True)
            except Exception:
                log.exception("re-publishing desired states failed")
            try:
                self._rollouts.tick()
            except Exception:  # the next tick tries again; a dead driver would stall every rollout
                log.exception("rollout tick failed")
        if self._lease is not None and leading:
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
