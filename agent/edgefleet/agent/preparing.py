"""The Stage and HealthCheck steps of an install: a slot made from verified blobs, then tried.

``SlotPreparer.stage`` pulls a container release's signed image (through ``Containers``, when
Docker answered) and stages the slot (``SlotStore.stage``) with the signed manifest and desired
state that prove it. ``SlotPreparer.check`` loads the staged slot (``switching.load_verified``:
the slot was staged from blobs verified by digest, against the manifest verified with the
desired state, so neither is parsed or hashed again) and runs the pre-activation health check
(``checking.examine``, judged by ``health.precheck_problem``); a slot that passes comes back as
the ``Candidate`` that ``switching.Switch.activate`` may make active.

Called by ``installing.Installer`` on the worker thread; nothing here touches the device state
or what serves.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgefleet.agent import checking, failpoints, health
from edgefleet.agent import goldenset as g
from edgefleet.agent import reconcile as r
from edgefleet.agent.metrics import AgentMetrics
from edgefleet.agent.reporting import Reporter
from edgefleet.agent.runtime import LoadedModel, ModelRuntime
from edgefleet.agent.state import PendingInstall
from edgefleet.agent.store import SlotStore, signed_manifest_of
from edgefleet.agent.switching import load_verified
from edgefleet.agent.variants import DECODED_DIGEST
from edgefleet.common.errors import ModelLoadError
from edgefleet.common.types import DesiredState, InstallPhase

if TYPE_CHECKING:
    from edgefleet.agent.containers import Containers


@dataclass(frozen=True)
class Candidate:
    """A staged slot that passed its health check: its runtime and golden data (if any)."""

    runtime: ModelRuntime
    golden: g.GoldenSet | None


class SlotPreparer:
    def __init__(
        self,
        *,
        store: SlotStore,
        reporter: Reporter,
        metrics: AgentMetrics,
        containers: Containers | None = None,
        fallback_sources: tuple[str, ...] = (),
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        """``containers``: None when Docker did not answer (container releases fail);
        ``fallback_sources``: where an image is pulled from after the desired state's sources;
        ``timer``: times the pre-activation latency runs."""
        self._store = store
        self._reporter = reporter
        self._metrics = metrics
        self._containers = containers
        self._fallback = fallback_sources
        self._timer = timer

    @property
    def runtimes(self) -> frozenset[str]:
        """The runtimes a release may name on this device."""
        return frozenset(r.SUPPORTED_RUNTIMES | ({"container"} if self._containers else set()))

    def stage(self, action: r.Stage, install: PendingInstall, desired: DesiredState) -> None:
        """Stage ``action``'s slot from the verified blobs (a container's image pulled first)."""
        manifest = desired.manifest
        if manifest.runtime == "container":  # the signed image, before the slot is staged
            if self._containers is None:
                raise ModelLoadError(f"{install.release} needs Docker, which this device lacks")
            pulled = self._containers.pull(
                manifest,
                install.manifest_digest,
                sources=(*desired.artifact_sources, *self._fallback),
            )
            self._metrics.image_pull_bytes.inc(pulled)
        self._store.stage(
            action.slot,
            digest=action.digest,
            golden_digest=action.golden_digest,
            signed_manifest=signed_manifest_of(install.desired),
            signed_desired=install.desired,  # proves the slot's generation if state.json is lost
            encoding=manifest.model_encoding,
            decoded_digest=manifest.annotations.get(DECODED_DIGEST, ""),
        )
        failpoints.hit("after_stage")

    def check(
        self, action: r.HealthCheck, install: PendingInstall, desired: DesiredState
    ) -> Candidate:
        """Load the staged slot and run its health check; raises ``ModelLoadError`` when it
        fails."""
        # The slot was staged from blobs verified by digest, against the manifest verified
        # with the desired state: carried here, not parsed or hashed again.
        assert desired.manifest_digest == install.manifest_digest
        model = LoadedModel(
            release=str(desired.manifest.ref),
            slot=action.slot,
            manifest=desired.manifest,
            manifest_digest=install.manifest_digest,
        )
        runtime = load_verified(self._store, model, metrics=self._metrics)
        if runtime.fallback:  # the check below runs on the provider the release will serve on
            self._event(install, "provider_fallback", runtime.fallback)
        golden = None
        if runtime.model.manifest.golden_digest:
            try:
                golden = g.load(self._store.golden_path(action.slot))
            except g.GoldenDataError as exc:
                raise ModelLoadError(f"health check: {exc}") from exc
        exam = checking.examine(runtime, golden, action.policy, timer=self._timer)
        problem = health.precheck_problem(
            action.policy, output_problems=exam.output_problems, latency=exam.latency
        )
        if problem:
            lines = runtime.last_lines()  # a container's: read before the sweep removes it
            raise ModelLoadError(
                f"health check: {problem}" + (f"; its last log lines: {lines}" if lines else "")
            )
        what = f"{golden.rows} golden rows pass" if golden is not None else "smoke inference passes"
        what = exam.note or what  # no smoke input the model accepts: said, not hidden
        self._event(
            install,
            "health_check_passed",
            f"{what}; median latency {exam.latency.median_ms:.3f} ms, "
            f"p95 {exam.latency.p95_ms:.3f} ms",
        )
        return Candidate(runtime, golden)

    def _event(self, install: PendingInstall, kind: str, message: str) -> None:
        self._reporter.event(
            kind,
            message,
            release=install.release,
            generation=install.generation,
            phase=InstallPhase.HEALTH_CHECK,
        )
