"""``loops.StoppableLoop`` on its own: a real thread, its runs counted, no sleeps. Each test
names its loop ``agent-…``, so the root conftest's leaked-thread check fails it if ``stop``
leaves the thread running."""

from __future__ import annotations

import threading

from edgefleet.common.loops import StoppableLoop

NAME = "agent-test-loop"
LONG_S = 3600.0  # a wait no test outlives: only ``stop`` can end it


def _running() -> bool:
    return any(t.name == NAME for t in threading.enumerate())


class _Body:
    """Counts its runs; ``reached`` is set at run ``until``, after which it asks ``wait_s``."""

    def __init__(self, *, until: int, wait_s: float) -> None:
        self.runs = 0
        self.reached = threading.Event()
        self._until = until
        self._wait_s = wait_s

    def __call__(self) -> float:
        self.runs += 1
        if self.runs >= self._until:
            self.reached.set()
            return self._wait_s
        return 0.0


def test_runs_the_body_again_until_stopped() -> None:
    body = _Body(until=3, wait_s=LONG_S)
    loop = StoppableLoop(body, name=NAME)
    loop.start()
    assert body.reached.wait(10)
    loop.stop()
    assert not _running()
    assert body.runs == 3  # the long wait after run 3 was cut by stop, not followed by a run


def test_waits_as_long_as_the_body_says() -> None:
    body = _Body(until=1, wait_s=LONG_S)
    loop = StoppableLoop(body, name=NAME)
    loop.start()
    assert body.reached.wait(10)
    loop.stop()
    assert not _running()
    assert body.runs == 1


def test_first_wait_comes_before_the_first_run() -> None:
    body = _Body(until=1, wait_s=LONG_S)
    loop = StoppableLoop(body, name=NAME, first_wait_s=LONG_S)
    loop.start()
    assert _running()
    loop.stop()
    assert not _running()
    assert body.runs == 0


def test_stop_before_start_is_harmless() -> None:
    loop = StoppableLoop(_Body(until=1, wait_s=0.0), name=NAME)
    loop.stop()
    assert not _running()


def test_last_runs_once_on_the_loops_thread_after_the_last_run() -> None:
    body = _Body(until=2, wait_s=LONG_S)
    seen: list[tuple[str, int]] = []

    def last() -> None:
        seen.append((threading.current_thread().name, body.runs))

    loop = StoppableLoop(body, name=NAME, last=last)
    loop.start()
    assert body.reached.wait(10)
    assert seen == []  # still waiting after run 2: the loop has not ended
    loop.stop()
    assert not _running()
    assert seen == [(NAME, 2)]
