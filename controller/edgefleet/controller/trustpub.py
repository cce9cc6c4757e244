"""What agents trust, kept on the broker: the trust bundle and every fleet's roster, retained.

A named thread (``controller-trust``) looks every ``interval_s`` (and at once when a key changes,
``wake``) at the bundle the key rows make and at each fleet's roster (``roster.current``), and
publishes whichever changed: the bundle on ``ef/v1/trust`` (one for all fleets: the signing keys
are global), each roster on ``ef/v1/fleet/{f}/roster`` signed by the active key, retained, QoS 1.
On every broker (re)connect (``reconnected``) it publishes all of them again, since the broker
may have lost its retained messages. A roster carries the time it was signed; agents refuse an
older one, so a re-publish sends the same bytes and a change is always signed anew. A fleet whose
last device left gets an empty roster. A publish that fails is tried on the next look.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from edgefleet.common import topics, trustbundle
from edgefleet.common.errors import EdgeFleetError
from edgefleet.common.mqttclient import Publisher
from edgefleet.common.trustbundle import Roster, RosterEntry, TrustBundle
from edgefleet.controller import roster as rosters
from edgefleet.controller.db import Database
from edgefleet.controller.keys import KeyRing

log = logging.getLogger(__name__)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class TrustPublisher:
    def __init__(
        self,
        keys: KeyRing,
        db: Database,
        publisher: Publisher,
        *,
        interval_s: float = 1.0,
        clock_ms: Callable[[], int] = _now_ms,
    ) -> None:
        self._keys = keys
        self._db = db
        self._publisher = publisher
        self._interval_s = interval_s
        self._clock_ms = clock_ms
        self._wake = threading.Event()
        self._reconnected = threading.Event()
        self._stop = threading.Event()
        self._bundle: tuple[TrustBundle, bytes] | None = None
        self._rosters: dict[str, tuple[tuple[RosterEntry, ...], bytes]] = {}
        self._issued_ms = 0
        self._thread = threading.Thread(target=self._run, name="controller-trust", daemon=True)

    def start(self) -> None:
        keys_changed = self._wake.set
        self._keys.on_change(keys_changed)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def wake(self) -> None:
        """Look now (a key changed, a device registered)."""
        self._wake.set()

    def reconnected(self) -> None:
        """The MQTT session (re)connected: publish everything again."""
        self._reconnected.set()
        self._wake.set()

    def publish(self, *, again: bool = False) -> int:
        """One look: publish what changed (``again``: everything); how many messages went."""
        sent = 0
        if self._publish_bundle(again=again):
            sent += 1
        sent += self._publish_rosters(again=again)
        return sent

    def _run(self) -> None:
        while not self._stop.is_set():
            again = self._reconnected.is_set()
            self._reconnected.clear()
            try:
                self.publish(again=again)
            except Exception:  # the next look tries again
                log.exception("publishing the trust bundle or rosters failed")
                if again:
                    self._reconnected.set()
            self._wake.wait(self._interval_s)
            self._wake.clear()

    def _publish_bundle(self, *, again: bool) -> bool:
        bundle = self._keys.bundle()
        if bundle is None:
            return False
        if self._bundle is not None and self._bundle[0] == bundle:
            if not again:
                return False
            payload = self._bundle[1]
        else:
            sealed = self._keys.sealed_bundle()
            if sealed is None:
                return False
            payload = sealed
        if not self._send(topics.trust(), payload):
            return False
        if self._bundle is None or self._bundle[0] != bundle:
            log.info(
                "trust bundle version %d published (active key %s)",
                bundle.version,
                bundle.active_key_id,
            )
        self._bundle = (bundle, payload)
        return True

    def _publish_rosters(self, *, again: bool) -> int:
        now = rosters.current(self._db)
        for fleet in self._rosters:
            now.setdefault(fleet, ())  # every device left: say so
        sent = 0
        key = None
        for fleet, entries in sorted(now.items()):
            held = self._rosters.get(fleet)
            if held is not None and held[0] == entries:
                if again and self._send(topics.roster(fleet), held[1]):
                    sent += 1
                continue
            if key is None:
                try:
                    _, key = self._keys.active()
                except EdgeFleetError:
                    return sent  # no signing key yet: nothing can be vouched for
            self._issued_ms = max(self._clock_ms(), self._issued_ms + 1)
            payload = trustbundle.seal_roster(Roster(fleet, self._issued_ms, entries), key)
            if self._send(topics.roster(fleet), payload):
                self._rosters[fleet] = (entries, payload)
                sent += 1
        return sent

    def _send(self, topic: str, payload: bytes) -> bool:
        try:
            self._publisher.publish(topic, payload, qos=1, retain=True)
        except EdgeFleetError as exc:
            log.warning("%s not queued (will retry): %s", topic, exc)
            return False
        return True
