"""Compressing a registered model version, for the ``CompressModel`` call.

The shell around ``compress.searching``: load the source version from the registry, check the
request (recipe, objective, eval data, the device to time on) before any work starts, run the
accuracy-gated search on a worker thread so that its per-candidate progress can be streamed,
and register the winner as the next version of the same name, with its parent version, report,
golden data and packed transfer container. When no candidate passes, nothing is registered and
the report still comes back. No protobuf here: ``api`` converts.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from edgefleet.common import packing
from edgefleet.common.errors import InvalidInputError, NotFoundError
from edgefleet.controller.compress import evaluating, recipes
from edgefleet.controller.compress.evaluating import EvalSet
from edgefleet.controller.compress.searching import (
    CandidateRecord,
    Objective,
    SearchResult,
    SearchSettings,
    search,
)
from edgefleet.controller.compress.timing import LocalTimer, Timer
from edgefleet.controller.records import ModelVersion
from edgefleet.controller.registry import Registry

log = logging.getLogger(__name__)

DEFAULT_MAX_DROP = 1.0


@dataclass(frozen=True)
class Job:
    """One compression request, as the API read it."""

    name: str
    version: int = 0  # 0 = the newest
    recipe: str = "auto"
    eval_data: bytes = b""  # .npz
    max_drop: float = DEFAULT_MAX_DROP
    objective: str = ""  # "" = balanced
    profile_on: str = ""  # device id; "" = time on the controller


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` candidates; a line of text, or the candidate just measured."""

    done: int
    total: int
    message: str = ""
    candidate: CandidateRecord | None = None


@dataclass(frozen=True)
class Outcome:
    """The end of a compression: the search's result and, when it passed, the new version."""

    source: ModelVersion
    result: SearchResult
    model: ModelVersion | None
    report_json: str
    report_markdown: str


Event = Progress | Outcome


class Cancelled(Exception):
    """The caller went away; raised from the search's progress hook to stop it."""


@dataclass(frozen=True)
class _Prepared:
    source: ModelVersion
    model: bytes
    eval_set: EvalSet
    total: int
    objective: Objective
    timer: Timer


def parse_objective(text: str) -> Objective:
    try:
        return Objective(text or Objective.BALANCED)
    except ValueError:
        choices = ", ".join(o.value for o in Objective)
        raise InvalidInputError(f"unknown objective {text!r}: choose one of {choices}") from None


class Compressor:
    """Runs compressions one at a time (each is CPU-bound); a second waits for the first.

    ``device_timer(device_id)`` makes the Timer for ``--profile-on``; it raises ``NotFoundError``
    for an unknown device.
    """

    def __init__(
        self,
        registry: Registry,
        *,
        device_timer: Callable[[str], Timer] | None = None,
        settings: SearchSettings | None = None,
    ) -> None:
        self._registry = registry
        self._device_timer = device_timer
        self._settings = settings or SearchSettings()
        self._slot = threading.Semaphore(1)

    def prepare(self, job: Job) -> _Prepared:
        """Check everything a request names before any work: raises ``NotFoundError`` or
        ``InvalidInputError`` (with the library's message naming the input and its shapes)."""
        source = self._registry.get(job.name, job.version)
        pipelines = recipes.parse_recipe(job.recipe or "auto")
        objective = parse_objective(job.objective)
        if job.max_drop < 0:
            raise InvalidInputError(f"max accuracy drop must be >= 0, got {job.max_drop:g}")
        if not job.eval_data:
            raise InvalidInputError("no eval data: send an .npz with the model's inputs by name")
        model = self._registry.model_bytes(source)
        eval_set = evaluating.load_eval_set(job.eval_data, model=model)
        timer: Timer = LocalTimer()
        if job.profile_on:
            if self._device_timer is None:
                raise NotFoundError("device", job.profile_on)
            timer = self._device_timer(job.profile_on)
        return _Prepared(source, model, eval_set, len(pipelines), objective, timer)

    def run(self, job: Job, *, cancelled: threading.Event | None = None) -> Iterator[Event]:
        """Progress events, then one ``Outcome``. Checks the request before the first event;
        errors of the search itself are raised from the iterator. Closing the iterator early
        (or setting ``cancelled``) stops the search after the candidate it is running."""
        prepared = self.prepare(job)
        cancelled = cancelled or threading.Event()
        if not self._slot.acquire(blocking=False):
            yield Progress(0, prepared.total, "waiting for another compression to finish")
            self._slot.acquire()
        try:
            yield Progress(
                0,
                prepared.total,
                f"timing {job.name} version {prepared.source.version} on {prepared.timer.where}, "
                f"then {prepared.total} candidate(s)",
            )
            yield from self._stream(job, prepared, cancelled)
        finally:
            self._slot.release()

    def _stream(self, job: Job, prepared: _Prepared, cancelled: threading.Event) -> Iterator[Event]:
        events: queue.Queue[Event | BaseException | None] = queue.Queue()

        def on_candidate(done: int, total: int, record: CandidateRecord) -> None:
            if cancelled.is_set():
                raise Cancelled
            events.put(Progress(done, total, candidate=record))

        def work() -> None:
            try:
                events.put(self._search(job, prepared, on_candidate))
            except BaseException as exc:  # handed to the caller's thread, raised there
                events.put(exc)
            finally:
                events.put(None)

        worker = threading.Thread(target=work, name=f"compress-{job.name}", daemon=True)
        worker.start()
        try:
            while (event := events.get()) is not None:
                if isinstance(event, BaseException):
                    if isinstance(event, Cancelled):
                        return
                    raise event
                yield event
        finally:
            cancelled.set()
            worker.join()

    def _search(
        self,
        job: Job,
        prepared: _Prepared,
        on_candidate: Callable[[int, int, CandidateRecord], None],
    ) -> Outcome:
        source = prepared.source
        result = search(
            prepared.model,
            prepared.eval_set,
            recipe=job.recipe or "auto",
            max_drop=job.max_drop,
            objective=prepared.objective,
            timer=prepared.timer,
            settings=self._settings,
            on_candidate=on_candidate,
        )
        report_json, report_markdown = result.report_json(), result.report_markdown()
        if result.winner is None or result.model is None:
            log.info("compress %s v%d: no candidate passed", source.name, source.version)
            return Outcome(source, result, None, report_json, report_markdown)
        transfer = result.transfer
        winner = result.winner
        model = self._registry.register_compressed(
            source,
            result.model,
            report_json=report_json,
            report_markdown=report_markdown,
            golden_npz=result.golden.to_npz() if result.golden is not None else None,
            transfer=transfer if transfer is not None and packing.is_packed(transfer) else None,
            description=f"compressed from version {source.version}: {winner.name} "
            f"(drop {winner.drop:.2f} points)",
        )
        log.info(
            "compress %s v%d: %s won, registered as version %d",
            source.name,
            source.version,
            winner.name,
            model.version,
        )
        return Outcome(source, result, model, report_json, report_markdown)
