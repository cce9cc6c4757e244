"""The shell around ``reconcile``: carries out its actions against disk, network and runtime.

Runs on the agent's single worker thread, so installs never overlap. Every change of the
persisted state goes through the ``Ledger`` (atomic write, then the status report), in the
order ``reconcile`` documents; the in-memory runtime is swapped only after the state naming it
is on disk, so a crash between the two restarts on the new, verified slot. Activation itself
is ``switching.Switch.activate`` (where every switch of the active model lives); a release
with a health window is activated with the window in that same state write, then handed to
``watching`` (which ``step`` runs between install steps).

Failures, by what to do about them: ``TransientError`` (and ``OSError``) keep the install and
retry it after a capped full-jitter backoff; ``PermanentError`` ends it as ``failed`` with its
generation recorded as applied (never retried), and the active model keeps serving.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from edgefleet.agent import checking, deltas, failpoints, fetching, health
from edgefleet.agent import goldenset as g
from edgefleet.agent import reconcile as r
from edgefleet.agent.errors import StopRequestedError
from edgefleet.agent.ledger import Ledger
from edgefleet.agent.metrics import AgentMetrics
from edgefleet.agent.predictor import Predictor
from edgefleet.agent.reporting import Reporter
from edgefleet.agent.runtime import LoadedModel, ModelRuntime
from edgefleet.agent.state import DeviceState, PendingInstall
from edgefleet.agent.store import SlotStore, signed_manifest_of
from edgefleet.agent.switching import Switch, load_verified
from edgefleet.agent.variants import resolve_desired
from edgefleet.agent.watching import HealthWatch
from edgefleet.common import backoff, digests, rpc
from edgefleet.common import types as t
from edgefleet.common.desired import open_desired
from edgefleet.common.errors import (
    EdgeFleetError,
    FetchError,
    IntegrityError,
    ModelLoadError,
    TransientError,
)
from edgefleet.common.signing import TrustStore
from edgefleet.common.types import DesiredState, InstallPhase

if TYPE_CHECKING:
    from edgefleet.agent.containers import Containers

log = logging.getLogger(__name__)

DECODED_DIGEST = "decoded_model_digest"  # annotation: what a packed model blob decodes to

# The event reported when an install enters a phase.
PHASE_EVENTS = {
    InstallPhase.FETCHING: "fetch_started",
    InstallPhase.VERIFYING: "fetched",
    InstallPhase.STAGED: "staged",
    InstallPhase.HEALTH_CHECK: "health_check_started",
}
_METRIC_PHASE = {
    r.Fetch: "fetching",
    r.Verify: "verifying",
    r.Stage: "staged",
    r.HealthCheck: "health_check",
    r.Activate: "active",
}


class Installer:
    def __init__(
        self,
        *,
        device_id: str,
        store: SlotStore,
        ledger: Ledger,
        watch: HealthWatch,
        trust: TrustStore,
        predictor: Predictor,
        reporter: Reporter,
        metrics: AgentMetrics,
        switch: Switch,
        fallback_sources: tuple[str, ...],
        fetch_deadline_s: float,
        fetch_stall_s: float | None = None,
        stopping: threading.Event,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
        timer: Callable[[], float] = time.perf_counter,
        containers: Containers | None = None,
        tls: Callable[[], rpc.ClientTls | None] = lambda: None,
        peer_tls: Callable[[str], rpc.ClientTls | None] = lambda _d: None,
    ) -> None:
        """``tls()``: how blob sources over gRPC are reached (``fetching.download``);
        ``peer_tls(device_id)``: how a ``peer://`` source is (mTLS to that device)."""
        self._tls = tls
        self._peer_tls = peer_tls
        self._device_id = device_id
        self._containers = containers  # None: Docker did not answer; container releases fail
        self._runtimes = r.SUPPORTED_RUNTIMES | ({"container"} if containers else set())
        self._store = store
        self._ledger = ledger
        self._watch = watch
        self._trust = trust
        self._predictor = predictor
        self._reporter = reporter
        self._metrics = metrics
        self._switch = switch
        self._fallback = fallback_sources
        self._fetch_deadline_s = fetch_deadline_s
        self._fetch_stall_s = fetch_stall_s
        self._fetch_from: tuple[str, int] | None = None  # (digest, bytes) the attempt began at
        self._stopping = stopping
        self._clock = clock
        self._rand = rand
        self._timer = timer  # times the pre-activation latency runs
        self._pending: DesiredState | None = None
        self._retry_at = 0.0
        self._checked: ModelRuntime | None = None
        self._checked_golden: g.GoldenSet | None = None

    @property
    def state(self) -> DeviceState:
        return self._ledger.state

    @property
    def checked_runtime(self) -> ModelRuntime | None:
        """The candidate that passed its health check and waits for activation, if any."""
        return self._checked

    def resume(self, state: DeviceState, pending: DesiredState | None) -> None:
        """Take over the state ``restoring`` produced at start-up (dropping slots it left)."""
        self._ledger.state, self._pending = state, pending
        self._ledger.prune()
        self._ledger.report()

    # the two entry points of the worker loop

    def offer(self, raw: bytes) -> None:
        """A desired-state payload from MQTT: verify it, then admit, ignore or reject it."""
        try:
            desired = resolve_desired(open_desired(raw, self._trust, device_id=self._device_id))
        except EdgeFleetError as exc:
            self._reporter.event("desired_rejected", f"{type(exc).__name__}: {exc}")
            return
        action = r.admit(desired, self._observe())
        if action is None:
            log.debug("desired generation %d already applied or under way", desired.generation)
        elif isinstance(action, r.Reject):
            self._reporter.event(
                "desired_rejected",
                action.reason,
                release=action.release,
                generation=action.generation,
            )
        elif isinstance(action, r.MarkApplied):
            self._mark_applied(action)
        elif isinstance(action, r.Fail):
            self._finish_failed(action.generation, action.release, action.reason)
        else:
            self._begin(action, desired, raw)

    def step(self) -> float | None:
        """Run a due checkup of the health window, then the next action of the pending install.

        Returns None when there is nothing to do, 0 to be called again at once, or the seconds
        to wait (before a retry or the next checkup).
        """
        try:
            watch_wait = self._watch.step()
        except Exception:  # a bug in a checkup must not stop installs: look again soon
            log.exception("health window checkup failed")
            watch_wait = 1.0
        install_wait = self._install_step()
        waits = [w for w in (watch_wait, install_wait) if w is not None]
        return min(waits) if waits else None

    def _install_step(self) -> float | None:
        if self._pending is None:
            return None
        actions = r.reconcile(
            self._pending, self._observe(), now=self._clock(), fallback_sources=self._fallback
        )
        if not actions:
            self._pending = None
            return None
        action = actions[0]
        if isinstance(action, r.Wait):
            return max(0.0, action.until - self._clock())
        try:
            self._carry_out(action)
        except StopRequestedError:
            log.info(
                "stopping in the middle of %s; it resumes on the next start", type(action).__name__
            )
        except (TransientError, OSError) as exc:
            self._retry(exc)
        except EdgeFleetError as exc:
            self._fail(exc)
        except Exception as exc:  # a bug must not install half a model or kill the worker
            log.exception("unexpected error in %s", type(action).__name__)
            self._fail(exc)
        return 0.0

    # observation

    def _observe(self) -> r.Observed:
        s, i = self.state, self.state.install
        progress = None
        if i is not None:
            progress = r.Progress(
                generation=i.generation,
                phase=i.phase,
                retry_at=self._retry_at,
                blob_stored=self._store.blobs.has(i.model_digest),
                partial_bytes=self._store.partial_size(i.model_digest),
                slot_staged=self._store.slot_ready(i.slot),
                health_checked=self._checked is not None and self._checked.model.slot == i.slot,
                golden_stored=bool(i.golden_digest) and self._store.blobs.has(i.golden_digest),
                golden_partial_bytes=self._store.partial_size(i.golden_digest)
                if i.golden_digest
                else 0,
            )
        return r.Observed(
            generation_applied=s.generation_applied,
            active_manifest_digest=s.active.manifest_digest if s.active else "",
            install=progress,
            runtimes=self._runtimes,
        )

    # admission

    def _commit(self, state: DeviceState, *, prune: bool = False) -> None:
        self._ledger.commit(state, prune=prune)

    def _begin(self, action: r.Begin, desired: DesiredState, raw: bytes) -> None:
        install = PendingInstall(
            generation=action.generation,
            release=action.release,
            slot=action.slot,
            phase=InstallPhase.FETCHING,
            manifest_digest=desired.manifest_digest,
            model_digest=desired.manifest.model_digest,
            golden_digest=desired.manifest.golden_digest,
            desired=raw,
        )
        self._pending, self._retry_at, self._checked = desired, 0.0, None
        self._reporter.event(
            "install_started",
            f"generation {action.generation}: {action.release} (model {install.model_digest})",
            release=action.release,
            generation=action.generation,
            phase=InstallPhase.FETCHING,
        )
        self._commit(
            replace(self.state, install=install, target_release=action.release, last_error="")
        )

    def _mark_applied(self, action: r.MarkApplied) -> None:
        self._pending, self._checked = None, None
        watched = self.state.window is not None  # still in its window: not proven yet
        phase = InstallPhase.HEALTH_CHECK if watched else InstallPhase.ACTIVE
        self._reporter.event(
            "already_active",
            f"{action.release} is the active release already",
            release=action.release,
            generation=action.generation,
            phase=phase,
        )
        self._commit(
            replace(
                self.state,
                generation_applied=action.generation,
                phase=phase,
                target_release=action.release,
                last_error="",
                install=None,
            ),
            prune=True,
        )

    # steps

    def _carry_out(self, action: r.Action) -> None:
        if isinstance(action, r.Fail):
            self._finish_failed(action.generation, action.release, action.reason)
            return
        if not isinstance(action, r.Fetch | r.Verify | r.Stage | r.HealthCheck | r.Activate):
            raise TypeError(f"not an install step: {action!r}")
        self._enter(r.PHASE_BEFORE[type(action)])
        started = time.perf_counter()
        if isinstance(action, r.Fetch):
            self._fetch(action)
        elif isinstance(action, r.Verify):
            self._verify(action)
        elif isinstance(action, r.Stage):
            self._stage(action)
        elif isinstance(action, r.HealthCheck):
            self._health_check(action)
        else:
            self._activate(action)
        self._metrics.phase_seconds.labels(_METRIC_PHASE[type(action)]).observe(
            time.perf_counter() - started
        )
        if not isinstance(action, r.Activate):
            self._enter(r.PHASE_AFTER[type(action)])

    def _enter(self, phase: InstallPhase) -> None:
        install = self.state.install
        if install is None or install.phase is phase:
            return
        self._reporter.event(
            PHASE_EVENTS[phase],
            f"generation {install.generation}: {install.phase} -> {phase}",
            release=install.release,
            generation=install.generation,
            phase=phase,
        )
        self._commit(replace(self.state, install=replace(install, phase=phase)))

    def _fetch(self, action: r.Fetch) -> None:
        partial = self._store.partial(action.digest)
        release = self.state.install.release if self.state.install else ""
        self._fetch_from = (action.digest, self._store.partial_size(action.digest))
        if action.offset:
            self._reporter.event(
                "fetch_resumed",
                f"resuming {action.digest} at byte {action.offset} of {action.size}",
                release=release,
                generation=action.generation,
                phase=InstallPhase.FETCHING,
            )
        chunks = self._chunks_for(action.digest)
        if chunks:
            self._fetch_chunks(action, chunks, partial)
            return
        self._download(action.sources, action.digest, partial, size=action.size)

    def _download(self, sources: Sequence[str], digest: str, partial: Path, *, size: int) -> None:
        """``fetching.download`` of the blob ``digest`` into ``partial`` under this
        installer's deadlines, stop event, byte counter and TLS."""
        fetching.download(
            sources,
            digest,
            partial,
            size=size,
            deadline_s=self._fetch_deadline_s,
            stall_s=self._fetch_stall_s,
            stopping=self._stopping,
            on_bytes=self._metrics.download_bytes.inc,
            tls=self._tls,
            peer_tls=self._peer_tls,
        )

    def _chunks_for(self, digest: str) -> tuple[t.Chunk, ...]:
        """The signed chunk list of the model blob ``digest`` (empty: fetch it whole)."""
        desired = self._pending
        if desired is None or desired.manifest.model_digest != digest:
            return ()
        return deltas.usable_chunks(desired.manifest)

    def _fetch_chunks(self, action: r.Fetch, chunks: tuple[t.Chunk, ...], partial: Path) -> None:
        """Assemble the model blob from held chunks and fetched ones (each verified); the
        Verify step then checks the whole against the model digest."""

        def fetch(chunk: t.Chunk) -> bytes:
            part = self._store.partial(chunk.digest)
            self._download(action.sources, chunk.digest, part, size=chunk.size)
            data = part.read_bytes()
            part.unlink(missing_ok=True)
            return data

        stats = deltas.assemble(chunks, partial, held=deltas.held_chunks(self._store), fetch=fetch)
        self._reporter.event(
            "delta_fetched",
            f"{stats.fetched} of {len(chunks)} chunks fetched ({stats.fetched_bytes} bytes), "
            f"{stats.reused} held ({stats.reused_bytes} bytes)",
            release=self.state.install.release if self.state.install else "",
            generation=action.generation,
            phase=InstallPhase.FETCHING,
        )

    def _verify(self, action: r.Verify) -> None:
        partial = self._store.partial(action.digest)
        size = self._store.partial_size(action.digest)
        if not partial.exists():
            raise FetchError(action.digest, "the download vanished before it was verified")
        try:
            if size != action.size:
                raise IntegrityError(
                    action.digest, f"{size} bytes where the manifest says {action.size}"
                )
            digests.verify_file(partial, action.digest)
        except IntegrityError:
            self._store.drop_partial(action.digest)
            raise
        self._store.blobs.adopt(partial, action.digest)
        failpoints.hit("after_verify")
        self._reporter.event(
            "verified",
            f"{action.digest}, {action.size} bytes",
            release=self.state.install.release if self.state.install else "",
            generation=action.generation,
            phase=InstallPhase.VERIFYING,
        )

    def _stage(self, action: r.Stage) -> None:
        install, desired = self.state.install, self._pending
        assert install is not None and desired is not None
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

    def _health_check(self, action: r.HealthCheck) -> None:
        install = self.state.install
        assert install is not None
        # The slot was staged from blobs verified by digest, against the manifest verified
        # with the desired state: carried here, not parsed or hashed again.
        desired = self._pending
        assert desired is not None and desired.manifest_digest == install.manifest_digest
        model = LoadedModel(
            release=str(desired.manifest.ref),
            slot=action.slot,
            manifest=desired.manifest,
            manifest_digest=install.manifest_digest,
        )
        runtime = load_verified(self._store, model, metrics=self._metrics)
        if runtime.fallback:  # the check below runs on the provider the release will serve on
            self._reporter.event(
                "provider_fallback",
                runtime.fallback,
                release=install.release,
                generation=install.generation,
                phase=InstallPhase.HEALTH_CHECK,
            )
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
        self._checked, self._checked_golden = runtime, golden
        what = f"{golden.rows} golden rows pass" if golden is not None else "smoke inference passes"
        what = exam.note or what  # no smoke input the model accepts: said, not hidden
        self._reporter.event(
            "health_check_passed",
            f"{what}; median latency {exam.latency.median_ms:.3f} ms, "
            f"p95 {exam.latency.p95_ms:.3f} ms",
            release=install.release,
            generation=install.generation,
            phase=InstallPhase.HEALTH_CHECK,
        )

    def _activate(self, action: r.Activate) -> None:
        install, runtime = self.state.install, self._checked
        assert install is not None and runtime is not None
        done = self._switch.activate(
            action,
            install,
            runtime,
            serving=self._predictor.current,
            watched_previous=self._watch.previous_runtime,
        )
        if done.window is not None:
            self._watch.begin(
                candidate=runtime,
                previous=done.previous_runtime,
                golden=self._checked_golden,
                policy=runtime.model.manifest.health,
            )
        else:
            self._watch.end()
        self._pending, self._checked, self._checked_golden = None, None, None
        self._switch.finish()

    # failure

    def _retry(self, exc: Exception) -> None:
        install = self.state.install
        if install is None:
            return
        attempts = install.attempts + 1
        at, self._fetch_from = self._fetch_from, None
        if at is not None and self._store.partial_size(at[0]) > at[1]:
            attempts = 1  # the download moved on before it was cut: no reason to wait long
        delay = backoff.delay(attempts - 1, base=1.0, cap=60.0, rand=self._rand)
        self._retry_at = self._clock() + delay
        self._reporter.event(
            "install_retry",
            f"attempt {attempts} failed: {exc}; retrying in {delay:.1f}s",
            release=install.release,
            generation=install.generation,
            phase=install.phase,
        )
        self._commit(
            replace(self.state, install=replace(install, attempts=attempts), last_error=str(exc))
        )

    def _fail(self, exc: Exception) -> None:
        install = self.state.install
        if install is not None:
            self._finish_failed(install.generation, install.release, f"{type(exc).__name__}: {exc}")

    def _finish_failed(self, generation: int, release: str, reason: str) -> None:
        self._pending, self._checked, self._checked_golden, self._retry_at = None, None, None, 0.0
        active = self.state.active.release if self.state.active else "none"
        self._reporter.event(
            "install_failed",
            f"{reason} (still serving: {active})",
            release=release,
            generation=generation,
            phase=InstallPhase.FAILED,
        )
        self._commit(
            replace(
                self.state,
                generation_applied=max(self.state.generation_applied, generation),
                phase=InstallPhase.FAILED,
                last_error=reason,
                target_release=release,
                install=None,
            ),
            prune=True,
        )
