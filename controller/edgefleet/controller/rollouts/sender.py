"""Desired states out: seal each engine command with the active key and the signed manifest of
the release it names, then publish it retained at QoS 1 on the device's desired topic.

Each desired state expires ``desired_ttl_ms`` after it is *sealed*: a re-published one (same
generation, ``shell``'s ``republish``) gets a fresh expiry, and the agent, which has that generation
already, ignores it as a redelivery.

Sealing is separate from publishing so that the caller can seal (and fail: no key, unknown
release) before it writes anything, and publish only after the write. A message paho refuses
to queue is kept and tried again on the next ``retry``, unless a newer one for the same device
replaced it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from edgefleet.common import desired, topics
from edgefleet.common import types as t
from edgefleet.common.errors import InvalidInputError, NotFoundError, TransientError
from edgefleet.common.mqttclient import Publisher
from edgefleet.controller.keys import KeyRing
from edgefleet.controller.metrics import Metrics
from edgefleet.controller.peering import PeerSources, choose
from edgefleet.controller.releases import Release, Releases

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Order:
    """One desired state to send: device, release, generation."""

    device_id: str
    release: str
    generation: int


@dataclass(frozen=True)
class Sealed:
    device_id: str
    generation: int
    payload: bytes


class Sender:
    def __init__(
        self,
        releases: Releases,
        *,
        keys: KeyRing,
        publisher: Publisher,
        metrics: Metrics,
        artifact_sources: Sequence[str],
        desired_ttl_ms: int = 30 * 86400 * 1000,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        peers: PeerSources | None = None,
    ) -> None:
        """``desired_ttl_ms`` 0: desired states never expire. ``peers``: devices of the fleet
        that hold a release are named as its sources before ``artifact_sources``."""
        self._releases = releases
        self._ttl_ms = desired_ttl_ms
        self._clock_ms = clock_ms
        self._keys = keys
        self._publisher = publisher
        self._metrics = metrics
        self._sources = tuple(artifact_sources)
        self._peers = peers
        self._lock = threading.Lock()
        self._unsent: dict[str, Sealed] = {}

    @property
    def connected(self) -> bool:
        return self._publisher.connected

    def seal(
        self, orders: Sequence[Order], *, rollout_id: str, fleet: str, issued_at_ms: int
    ) -> tuple[list[Sealed], dict[str, str]]:
        """Seal every order; also return, per device, why its order cannot be sealed (a
        release this controller does not hold). ``NoSigningKeyError`` when there is no key."""
        if not orders:
            return [], {}
        _, key = self._keys.active()
        expires_at_ms = self._clock_ms() + self._ttl_ms if self._ttl_ms > 0 else 0
        manifests: dict[str, Release | None] = {}
        sources = self._sources_for(orders, fleet)
        sealed: list[Sealed] = []
        missing: dict[str, str] = {}
        for o in orders:
            if o.release not in manifests:
                manifests[o.release] = self._find(o.release)
            release = manifests[o.release]
            if release is None:
                missing[o.device_id] = f"release {o.release} is not known to this controller"
                continue
            payload = desired.seal(
                device_id=o.device_id,
                fleet=fleet,
                generation=o.generation,
                signed_manifest=release.signed_manifest,
                rollout_id=rollout_id,
                issued_at_ms=issued_at_ms,
                artifact_sources=sources(o),
                key=key,
                expires_at_ms=expires_at_ms,
            )
            sealed.append(Sealed(o.device_id, o.generation, payload))
        return sealed, missing

    def _sources_for(self, orders: Sequence[Order], fleet: str) -> Callable[[Order], list[str]]:
        """Per order: nearby peers holding its release first (``peering``), the controller last;
        the holders are read once per release of this batch."""
        if self._peers is None or self._peers.limit <= 0:
            return lambda _o: list(self._sources)
        peers = self._peers
        holders = {r: peers.holders(fleet, r) for r in {o.release for o in orders}}
        if not any(holders.values()):
            return lambda _o: list(self._sources)
        sites = peers.sites([o.device_id for o in orders])

        def of(o: Order) -> list[str]:
            site = sites.get(o.device_id, "")
            near = choose(holders[o.release], device_id=o.device_id, site=site, limit=peers.limit)
            return [*near, *self._sources]

        return of

    def publish(self, sealed: Sequence[Sealed]) -> None:
        """Queue each message (paho sends QoS 1 once the broker is reachable)."""
        with self._lock:
            for s in sealed:
                self._unsent.pop(s.device_id, None)
                self._publish(s)

    def retry(self) -> None:
        with self._lock:
            unsent, self._unsent = list(self._unsent.values()), {}
            for s in unsent:
                self._publish(s)

    def _publish(self, s: Sealed) -> None:
        try:
            self._publisher.publish(topics.desired(s.device_id), s.payload, qos=1, retain=True)
        except TransientError as exc:
            log.error(
                "desired state %d for %s not queued (will retry): %s",
                s.generation,
                s.device_id,
                exc,
                extra={"device": s.device_id},
            )
            self._unsent[s.device_id] = s
        else:
            self._metrics.desired_published.inc()

    def _find(self, release: str) -> Release | None:
        try:
            return self._releases.get(t.ReleaseRef.parse(release))
        except (NotFoundError, InvalidInputError):
            return None
