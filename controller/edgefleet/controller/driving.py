"""The rollout driver: a named background thread that steps every unfinished rollout each tick.

All state lives in the database, so the driver itself holds none: a controller killed in the
middle of a rollout starts a new driver that picks the rollout up where the last step left it
(and first re-sends the desired states that rollout still waits for).
"""

from __future__ import annotations

import logging
import threading

from edgefleet.controller.rolling import Rollouts

log = logging.getLogger(__name__)


class RolloutDriver:
    def __init__(self, rollouts: Rollouts, *, tick_s: float) -> None:
        self._rollouts = rollouts
        self._tick_s = tick_s
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
        try:
            self._rollouts.resend_pending()
        except Exception:
            log.exception("re-sending the desired states of unfinished rollouts failed")
        while not self._stop.wait(self._tick_s):
            try:
                self._rollouts.tick()
            except Exception:  # the next tick tries again; a dead driver would stall every rollout
                log.exception("rollout tick failed")
