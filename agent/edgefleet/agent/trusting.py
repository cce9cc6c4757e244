"""The agent's trust bundle: the newest verified one, persisted, followed by the ``TrustStore``.

Fed the retained ``ef/v1/trust`` message on paho's thread (cheap: a parse and one Ed25519
check per signature). A bundle is taken only when ``trustbundle.open_bundle`` accepts it
(signed by a key trusted now, newer version); it is written to ``<data-dir>/trust.bundle``
atomically *before* the store follows it, so a restart comes back to it and an older bundle
replayed later (or kept by a broker) is refused. At start the stored bundle is opened against
the given keys plus its own (it was verified when it arrived; this catches a damaged file),
and a damaged one is set aside with a warning: the given keys still hold. An adopted bundle is
reported (event ``trust_updated``); a refused one is logged and counted (``rejected``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edgefleet.agent.reporting import Reporter
from edgefleet.common import trustbundle, wire
from edgefleet.common.artifacts import atomic_write
from edgefleet.common.errors import EdgeFleetError
from edgefleet.common.signing import TrustStore
from edgefleet.common.trustbundle import StaleBundleError, TrustBundle
from edgefleet.v1 import trust_pb2

log = logging.getLogger(__name__)

BUNDLE_FILE = "trust.bundle"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class TrustKeeper:
    def __init__(
        self,
        trust: TrustStore,
        *,
        data_dir: Path,
        reporter: Reporter | None = None,
        clock_ms: Callable[[], int] = _now_ms,
    ) -> None:
        self.trust = trust
        self.path = data_dir / BUNDLE_FILE
        self._reporter = reporter
        self._clock_ms = clock_ms
        self._lock = threading.Lock()
        self.bundle: TrustBundle | None = None
        self.rejected = 0
        """Bundles refused: older, unsigned or signed by a key not trusted."""

    def load(self) -> TrustBundle | None:
        """Adopt the stored bundle, if there is one that still opens."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            bundle = _open_stored(data, self.trust)
        except EdgeFleetError as exc:
            aside = self.path.with_name(f"{BUNDLE_FILE}.damaged")
            self.path.replace(aside)
            log.warning("stored trust bundle does not open (%s); moved to %s", exc, aside)
            return None
        trustbundle.adopt(self.trust, bundle)
        self.bundle = bundle
        log.info("trust bundle version %d: keys %s", bundle.version, ", ".join(bundle.key_ids))
        return bundle

    def offer(self, payload: bytes) -> bool:
        """A bundle from MQTT; True when it was adopted."""
        if not payload:
            return False
        with self._lock:
            try:
                bundle = trustbundle.open_bundle(payload, self.trust, now_ms=self._clock_ms())
            except StaleBundleError as exc:
                if exc.version == exc.held:
                    return False  # the bundle held, delivered again
                self._reject(exc)
                return False
            except EdgeFleetError as exc:
                self._reject(exc)
                return False
            atomic_write(self.path, payload)  # first on disk: a restart must not forget it
            trustbundle.adopt(self.trust, bundle)
            self.bundle = bundle
        log.info(
            "trust bundle version %d adopted: keys %s, revoked %s",
            bundle.version,
            ", ".join(bundle.key_ids),
            ", ".join(bundle.revoked) or "none",
        )
        if self._reporter is not None:
            self._reporter.event(
                "trust_updated",
                f"trust bundle version {bundle.version}: active key {bundle.active_key_id}, "
                f"{len(bundle.keys)} key(s), {len(bundle.revoked)} revoked",
            )
        return True

    def _reject(self, exc: EdgeFleetError) -> None:
        # Logged and counted, not reported: a broker shared by several controllers (or an
        # attacker) could otherwise fill every device's event log.
        self.rejected += 1
        log.warning("trust bundle refused: %s", exc)


def _open_stored(data: bytes, given: TrustStore) -> TrustBundle:
    """A stored bundle, checked against the given keys and the keys it lists itself."""
    msg = wire.parse(trust_pb2.SignedTrustBundle, data, what="stored trust bundle")
    bundle = trustbundle.decode_bundle(msg.payload)
    scratch = TrustStore(given.key_ids.values())
    trustbundle.adopt(scratch, bundle)
    return trustbundle.open_bundle(data, scratch, now_ms=None, held=0)
