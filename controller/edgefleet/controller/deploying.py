"""Deploy and fleet rollback as the operator asks for them: check every argument and every
precondition first (release, fleet, broker, signing key), then hand over to ``rolling``, which
persists each step before it publishes.

The strategy is parsed by the caller (``api.strategy``) before it gets here, so an invalid one
fails before anything is looked up, written or sent.
"""

from __future__ import annotations

from collections.abc import Callable

from edgefleet.common import types as t
from edgefleet.controller.errors import BrokerUnavailableError
from edgefleet.controller.keys import KeyRing
from edgefleet.controller.metrics import Metrics
from edgefleet.controller.records import Started
from edgefleet.controller.releases import Releases
from edgefleet.controller.rolling import Rollouts
from edgefleet.controller.rollouts.strategy import Strategy
from edgefleet.controller.sending import Sender


class Deployer:
    def __init__(
        self,
        rollouts: Rollouts,
        releases: Releases,
        *,
        keys: KeyRing,
        sender: Sender,
        metrics: Metrics,
    ) -> None:
        self._rollouts = rollouts
        self._releases = releases
        self._keys = keys
        self._sender = sender
        self._metrics = metrics

    def deploy(self, release: str, fleet: str, strategy: Strategy) -> Started:
        def run() -> Started:
            ref = self._check(release, fleet)
            return self._rollouts.start(fleet=fleet, release=str(ref), strategy=strategy)

        return self._counted(run)

    def rollback(self, fleet: str, *, to_release: str = "") -> Started:
        ref = self._check(to_release or None, fleet)
        return self._rollouts.rollback(fleet, to_release=str(ref) if ref else "")

    def _check(self, release: str | None, fleet: str) -> t.ReleaseRef | None:
        ref = t.ReleaseRef.parse(release) if release is not None else None
        t.validate_name("fleet", fleet)
        if ref is not None:
            self._releases.get(ref)  # NotFoundError
        self._rollouts.devices(fleet)  # NotFoundError
        if not self._sender.connected:
            raise BrokerUnavailableError("MQTT broker not connected")
        self._keys.active()  # NoSigningKeyError, before anything is written
        return ref

    def _counted(self, run: Callable[[], Started]) -> Started:
        try:
            result = run()
        except Exception:
            self._metrics.deploys.labels("failed").inc()
            raise
        self._metrics.deploys.labels("ok").inc()
        return result
