"""Deploy and fleet rollback as the operator asks for them: check every argument and every
precondition first (release, fleet, broker, signing key), then hand over to ``shell``, which
persists each step before it publishes.

A container release goes only to a fleet whose every device reported the ``container`` runtime
in its status (Docker answered its agent at start): otherwise the deploy is refused, naming the
devices, and nothing is sent. There is no silent in-process fallback: the signed release is an
image (maybe the user's own, with its own pre/post-processing), not something a process
release could stand in for.

The strategy is parsed by the caller (``api.strategy``) before it gets here, so an invalid one
fails before anything is looked up, written or sent.
"""

from __future__ import annotations

from collections.abc import Callable

from edgefleet.common import types as t
from edgefleet.controller.errors import BrokerUnavailableError, RuntimeMissingError
from edgefleet.controller.keys import KeyRing
from edgefleet.controller.metrics import Metrics
from edgefleet.controller.releases import Releases
from edgefleet.controller.rollouts.sender import Sender
from edgefleet.controller.rollouts.shell import Rollouts, Started
from edgefleet.controller.rollouts.strategy import Strategy

SHOWN = 10  # devices named in a refusal; the rest counted


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
        runtime = self._releases.get(ref).manifest.runtime if ref is not None else ""  # NotFound
        self._rollouts.devices(fleet)  # NotFoundError
        if runtime == "container":
            self._check_runtime(str(ref), fleet, runtime)
        if not self._sender.connected:
            raise BrokerUnavailableError("MQTT broker not connected")
        self._keys.active()  # NoSigningKeyError, before anything is written
        return ref

    def _check_runtime(self, release: str, fleet: str, runtime: str) -> None:
        """Refuse a release that some devices of the fleet cannot run, naming them: a fleet is
        deployed whole, so a device that cannot run it would only fail its install."""
        lacking = self._rollouts.lacking(fleet, runtime)
        if not lacking:
            return
        shown = ", ".join(lacking[:SHOWN]) + (
            f" and {len(lacking) - SHOWN} more" if len(lacking) > SHOWN else ""
        )
        raise RuntimeMissingError(
            f"{release} runs in a container, which {len(lacking)} device(s) of fleet {fleet} "
            f"cannot run (their agent found no Docker, or runs with --no-containers): {shown}; "
            "install Docker there (the agent probes it at start), deploy to a fleet whose "
            "devices all run containers, or release the model to run in-process "
            "(edgectl release create ... --runtime onnxruntime)",
            devices=lacking,
        )

    def _counted(self, run: Callable[[], Started]) -> Started:
        try:
            result = run()
        except Exception:
            self._metrics.deploys.labels("failed").inc()
            raise
        self._metrics.deploys.labels("ok").inc()
        return result
