"""A stoppable background loop: one named daemon thread that runs a body, waits, runs it again.

The agent's background loops (``containerwatch``, ``telemetry``, the certificate ``Renewer``)
and the controller's rollout driver each needed the same thread, stop event and join; here
they are once. ``body()`` runs on
the loop's thread and returns the seconds to wait before it runs again; ``stop`` ends the wait
at once, lets a run under way finish, then joins the thread (up to ``join_timeout_s``).
``last``, if given, runs once on the loop's thread after the last run (the driver gives its
lease up there, after its last tick, even when ``stop`` stopped waiting for it). The body
handles its own errors: one it lets out ends the loop (and, under the tests, fails the test
that started it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class StoppableLoop:
    def __init__(
        self,
        body: Callable[[], float],
        *,
        name: str,
        first_wait_s: float = 0.0,
        join_timeout_s: float = 10.0,
        last: Callable[[], None] | None = None,
    ) -> None:
        """``name``: the thread's; ``first_wait_s``: the wait before the first run (0: at once)."""
        self._body = body
        self._last = last
        self._first_wait_s = first_wait_s
        self._join_timeout_s = join_timeout_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """End the loop: no run starts after this returns (one under way finishes first)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self._join_timeout_s)

    def _run(self) -> None:
        wait = self._first_wait_s
        while not self._stop.wait(wait):
            wait = self._body()
        if self._last is not None:
            self._last()
