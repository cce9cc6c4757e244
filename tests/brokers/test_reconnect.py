"""A session whose broker restarts reconnects after capped exponential delays with full jitter
(``edgefleet.common.backoff``), counted from 0 again after each good connection: with a real
Mosquitto stopped and started again on its port. The random source is the test's (seeded) and
every delay the session asks paho for is recorded; no wall-clock figure is asserted, only that
the session waited at least the delays it drew."""

from __future__ import annotations

import random
import threading
import time
import uuid

from edgefleet.common import backoff
from edgefleet.common.mqttclient import MqttSession
from tests.conftest import Broker

TIMEOUT = 30.0
BASE, CAP = 0.2, 1.6  # small, so a few attempts fit while the broker is down


class Delays:
    """The backoff the session gets: full jitter from a seeded source, each draw recorded."""

    def __init__(self, seed: int) -> None:
        self.rand = random.Random(seed)
        self.taken: list[tuple[int, float]] = []  # (attempt, seconds), appended by paho's thread
        self.drawn = threading.Condition()

    def __call__(self, attempt: int) -> float:
        wait = backoff.delay(attempt, base=BASE, cap=CAP, rand=self.rand.random)
        with self.drawn:
            self.taken.append((attempt, wait))
            self.drawn.notify_all()
        return wait

    def wait_for(self, count: int) -> list[tuple[int, float]]:
        with self.drawn:
            if not self.drawn.wait_for(lambda: len(self.taken) >= count, TIMEOUT):
                raise AssertionError(f"only {self.taken} drawn in {TIMEOUT}s")
            return list(self.taken)


def test_a_session_reconnects_after_a_broker_restart_with_jittered_backoff(
    own_broker: Broker,
) -> None:
    delays = Delays(seed=13)
    session = MqttSession(
        own_broker.url,
        client_id=f"reconnect-{uuid.uuid4().hex[:8]}",
        subscriptions=[(f"ef/v1/test/{uuid.uuid4().hex[:8]}", 1)],
        reconnect_delay=delays,
    )
    session.start()
    try:
        assert session.wait_subscribed(TIMEOUT)
        assert delays.taken == []  # the broker was up: no wait before the first connect

        lost = time.monotonic()
        own_broker.stop()
        # The loss, then seven refused attempts: in well under TIMEOUT with these delays, but
        # not with paho's own doubling from 1 s (1 + 2 + ... + 64 s).
        down = delays.wait_for(8)
        assert not session.connected
        own_broker.start()
        assert session.wait_subscribed(TIMEOUT)
        back = time.monotonic()

        first = list(delays.taken)
        # One draw per attempt, the exponent growing by one each time, from 0 at the loss.
        assert [a for a, _ in first] == list(range(len(first)))
        assert len(first) >= len(down)
        # Full jitter: each wait anywhere in [0, min(cap, base * 2^attempt)], not the ceiling.
        for attempt, wait in first:
            assert 0.0 <= wait <= min(CAP, BASE * 2**attempt)
        assert any(wait < min(CAP, BASE * 2**attempt) * 0.9 for attempt, wait in first)
        # paho waited each of them before the attempt it belongs to (a lower bound only: a
        # slow machine takes longer, never shorter).
        assert back - lost >= sum(wait for _, wait in first)

        # A good connection resets the exponent: the next loss starts from attempt 0 again.
        own_broker.stop()
        again = delays.wait_for(len(first) + 1)
        assert again[len(first)][0] == 0
        own_broker.start()
        assert session.wait_subscribed(TIMEOUT)
    finally:
        session.stop()
