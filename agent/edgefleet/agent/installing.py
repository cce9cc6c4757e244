"""The shell around ``reconcile``: the install transaction, one action at a time.

Runs on the agent's single worker thread, so installs never overlap. ``Installer`` admits a
desired state (``offer``), then carries out the first action ``reconcile`` returns at each
``step``, through the part that does it:

* Fetch and Verify: ``downloading.Downloader`` (bytes into the blob store, checked);
* Stage and HealthCheck: ``preparing.SlotPreparer`` (a slot from verified blobs, tried);
* Activate: ``switching.Switch.activate`` (where every switch of the active model lives); a
  release with a health window is activated with the window in that same state write, then
  handed to ``watching`` (which ``step`` runs between install steps).

Every other change of the persisted state (an install begun, a phase entered, a retry, a
failure) is ``journal.InstallJournal``'s, in the order ``reconcile`` documents; the in-memory
runtime is swapped only after the state naming it is on disk, so a crash between the two
restarts on the new, verified slot.

Failures, by what to do about them: ``TransientError`` (and ``OSError``) keep the install and
retry it after a capped full-jitter backoff; ``PermanentError`` ends it as ``failed`` with its
generation recorded as applied (never retried), and the active model keeps serving.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

from edgefleet.agent import deltas
from edgefleet.agent import reconcile as r
from edgefleet.agent.downloading import Downloader
from edgefleet.agent.errors import StopRequestedError
from edgefleet.agent.journal import InstallJournal
from edgefleet.agent.metrics import AgentMetrics
from edgefleet.agent.predictor import Predictor
from edgefleet.agent.preparing import Candidate, SlotPreparer
from edgefleet.agent.runtime import ModelRuntime
from edgefleet.agent.state import DeviceState, PendingInstall
from edgefleet.agent.store import SlotStore
from edgefleet.agent.switching import Switch
from edgefleet.agent.variants import resolve_desired
from edgefleet.agent.watching import HealthWatch
from edgefleet.common import backoff
from edgefleet.common import types as t
from edgefleet.common.desired import open_desired
from edgefleet.common.errors import EdgeFleetError, TransientError
from edgefleet.common.signing import TrustStore
from edgefleet.common.types import DesiredState

log = logging.getLogger(__name__)

_METRIC_PHASE = {
    r.Fetch: "fetching",
    r.Verify: "verifying",
    r.Stage: "staged",
    r.HealthCheck: "health_check",
    r.Activate: "active",
}


def observe(
    state: DeviceState,
    store: SlotStore,
    *,
    retry_at: float,
    candidate: Candidate | None,
    runtimes: frozenset[str],
) -> r.Observed:
    """What ``reconcile`` is told: the device state and what the store holds of its install."""
    i = state.install
    progress = None
    if i is not None:
        progress = r.Progress(
            generation=i.generation,
            phase=i.phase,
            retry_at=retry_at,
            blob_stored=store.blobs.has(i.model_digest),
            partial_bytes=store.partial_size(i.model_digest),
            slot_staged=store.slot_ready(i.slot),
            health_checked=candidate is not None and candidate.runtime.model.slot == i.slot,
            golden_stored=bool(i.golden_digest) and store.blobs.has(i.golden_digest),
            golden_partial_bytes=store.partial_size(i.golden_digest) if i.golden_digest else 0,
        )
    return r.Observed(
        generation_applied=state.generation_applied,
        active_manifest_digest=state.active.manifest_digest if state.active else "",
        install=progress,
        runtimes=runtimes,
    )


class Installer:
    def __init__(
        self,
        *,
        device_id: str,
        trust: TrustStore,
        journal: InstallJournal,
        downloader: Downloader,
        preparer: SlotPreparer,
        switch: Switch,
        watch: HealthWatch,
        store: SlotStore,
        predictor: Predictor,
        metrics: AgentMetrics,
        fallback_sources: tuple[str, ...],
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        """``trust``/``device_id``: what a desired state is opened with; ``store``: what is
        observed of the install; ``predictor``: what serves now (the fall-back of an
        activation); ``clock``/``rand``: the retry backoff's."""
        self._device_id = device_id
        self._trust = trust
        self._journal = journal
        self._downloader = downloader
        self._preparer = preparer
        self._switch = switch
        self._watch = watch
        self._store = store
        self._predictor = predictor
        self._metrics = metrics
        self._fallback = fallback_sources
        self._clock = clock
        self._rand = rand
        self._pending: DesiredState | None = None
        self._retry_at = 0.0
        self._candidate: Candidate | None = None

    @property
    def state(self) -> DeviceState:
        return self._journal.state

    @property
    def checked_runtime(self) -> ModelRuntime | None:
        """The candidate that passed its health check and waits for activation, if any."""
        return self._candidate.runtime if self._candidate is not None else None

    def resume(self, state: DeviceState, pending: DesiredState | None) -> None:
        """Take over the state ``restoring`` produced at start-up (dropping slots it left)."""
        self._pending = pending
        self._journal.resume(state)

    # the two entry points of the worker loop

    def offer(self, raw: bytes) -> None:
        """A desired-state payload from MQTT: verify it, then admit, ignore or reject it."""
        try:
            desired = resolve_desired(open_desired(raw, self._trust, device_id=self._device_id))
        except EdgeFleetError as exc:
            self._journal.rejected(f"{type(exc).__name__}: {exc}")
            return
        action = r.admit(desired, self._observe())
        if action is None:
            log.debug("desired generation %d already applied or under way", desired.generation)
        elif isinstance(action, r.Reject):
            self._journal.rejected(
                action.reason, release=action.release, generation=action.generation
            )
        elif isinstance(action, r.MarkApplied):
            self._pending, self._candidate = None, None
            self._journal.already_applied(action)
        elif isinstance(action, r.Fail):
            self._finish_failed(action.generation, action.release, action.reason)
        else:
            self._pending, self._retry_at, self._candidate = desired, 0.0, None
            self._journal.begun(action, desired, raw)

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

    def _observe(self) -> r.Observed:
        return observe(
            self.state,
            self._store,
            retry_at=self._retry_at,
            candidate=self._candidate,
            runtimes=self._preparer.runtimes,
        )

    # steps

    def _carry_out(self, action: r.Action) -> None:
        if isinstance(action, r.Fail):
            self._finish_failed(action.generation, action.release, action.reason)
            return
        if not isinstance(action, r.Fetch | r.Verify | r.Stage | r.HealthCheck | r.Activate):
            raise TypeError(f"not an install step: {action!r}")
        self._journal.enter(r.PHASE_BEFORE[type(action)])
        started = time.perf_counter()
        release = self.state.install.release if self.state.install else ""
        if isinstance(action, r.Fetch):
            self._downloader.fetch(action, release=release, chunks=self._chunks_for(action.digest))
        elif isinstance(action, r.Verify):
            self._downloader.verify(action, release=release)
        elif isinstance(action, r.Stage):
            self._preparer.stage(action, *self._under_way())
        elif isinstance(action, r.HealthCheck):
            self._candidate = self._preparer.check(action, *self._under_way())
        else:
            self._activate(action)
        self._metrics.phase_seconds.labels(_METRIC_PHASE[type(action)]).observe(
            time.perf_counter() - started
        )
        if not isinstance(action, r.Activate):
            self._journal.enter(r.PHASE_AFTER[type(action)])

    def _under_way(self) -> tuple[PendingInstall, DesiredState]:
        install, desired = self.state.install, self._pending
        assert install is not None and desired is not None
        return install, desired

    def _chunks_for(self, digest: str) -> tuple[t.Chunk, ...]:
        """The signed chunk list of the model blob ``digest`` (empty: fetch it whole)."""
        desired = self._pending
        if desired is None or desired.manifest.model_digest != digest:
            return ()
        return deltas.usable_chunks(desired.manifest)

    def _activate(self, action: r.Activate) -> None:
        install, candidate = self.state.install, self._candidate
        assert install is not None and candidate is not None
        done = self._switch.activate(
            action,
            install,
            candidate.runtime,
            serving=self._predictor.current,
            watched_previous=self._watch.previous_runtime,
        )
        if done.window is not None:
            self._watch.begin(
                candidate=candidate.runtime,
                previous=done.previous_runtime,
                golden=candidate.golden,
                policy=candidate.runtime.model.manifest.health,
            )
        else:
            self._watch.end()
        self._pending, self._candidate = None, None
        self._switch.finish()

    # failure

    def _retry(self, exc: Exception) -> None:
        install = self.state.install
        if install is None:
            return
        attempts = install.attempts + 1
        if self._downloader.moved_on():
            attempts = 1  # the download moved on before it was cut: no reason to wait long
        delay = backoff.delay(attempts - 1, base=1.0, cap=60.0, rand=self._rand)
        self._retry_at = self._clock() + delay
        self._journal.retrying(install, exc, attempts=attempts, delay=delay)

    def _fail(self, exc: Exception) -> None:
        install = self.state.install
        if install is not None:
            self._finish_failed(install.generation, install.release, f"{type(exc).__name__}: {exc}")

    def _finish_failed(self, generation: int, release: str, reason: str) -> None:
        self._pending, self._candidate, self._retry_at = None, None, 0.0
        self._journal.failed(generation, release, reason)
