"""Compressing a registered model version, for the ``CompressModel`` call.

The shell around ``compress.searching``: load the source version from the registry, check the
request (recipe, objective, eval data, the device to time on) before any work starts, run the
accuracy-gated search, streaming its per-candidate progress, and register the winner as the
next version of the same name, with its parent version, report, golden data and packed
transfer container. When no candidate passes, nothing is registered and the report still comes
back. No protobuf here: ``api`` converts.

The user's model runs only in sandbox processes (``sandbox``, the registry's): the eval set is
checked against it in one, and the whole search runs in another, which sends each candidate
back as it is measured. With ``variants`` the search also picks a model per hardware class from
its candidates (``compress.variantset``); each is registered as a version of its own, before
the winner, so the winner stays the newest version. Timing on a device (``--profile-on``)
needs the signing key, so the search asks the controller to time each candidate
(``_AskingTimer``); the key never enters the sandbox. A search that crashes, runs out of
memory or time fails with ``SandboxError``.

A user's metric (``--metric-module``) arrives as source text and stays text in this process:
it is checked for size and a function name only, handed to the search's sandbox child, and
compiled only in a seccomp-confined process that child starts (``compress.metric_hook``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TypeVar

from edgefleet.common import externaldata, feeds, packing
from edgefleet.common.errors import InvalidInputError, NotFoundError
from edgefleet.controller.compress import evaluating, metric_hook, recipes, variantset
from edgefleet.controller.compress.evaluating import EvalSet, MetricChoice, parse_metrics
from edgefleet.controller.compress.graphs import Feed
from edgefleet.controller.compress.metric_hook import MetricModule
from edgefleet.controller.compress.searching import (
    CandidateRecord,
    Objective,
    SearchResult,
    SearchSettings,
    Upcoming,
    search,
)
from edgefleet.controller.compress.timing import Latency, LocalTimer, Timer
from edgefleet.controller.compress.winnergolden import GoldenMode
from edgefleet.controller.errors import SandboxError
from edgefleet.controller.registry import ModelVersion, Registry
from edgefleet.controller.sandbox import Channel

log = logging.getLogger(__name__)
E = TypeVar("E", bound=StrEnum)

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
    time_budget_s: float | None = None  # None = the settings' default; 0 = no budget
    metric: str = ""  # "" = auto; KIND[:ARG] or OUTPUT=KIND[:ARG], comma-separated
    metric_module: MetricModule | None = None  # a user's metric: source text, never imported
    golden: str = ""  # "" = auto (attach when its tolerances hold) | always | never
    cores: int = 0  # the speed gate's second thread count; 0 = the timing host's cores
    carry: tuple[str, ...] = ()  # IN=OUT: a feed's output OUT is the next feed's input IN
    variants: bool = False  # also register the models per hardware class (variantset)


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` candidates; a line of text, or the candidate just measured."""

    done: int
    total: int
    message: str = ""
    candidate: CandidateRecord | None = None
    elapsed_s: float = 0.0  # since the search started
    remaining_s: float = 0.0  # estimated for the candidates left, within the time budget


@dataclass(frozen=True)
class RegisteredVariant:
    """A model for a hardware class, as registered (``name`` "": the release's default)."""

    name: str
    candidate: str
    requires: tuple[str, ...]
    providers: tuple[str, ...]
    model: ModelVersion


@dataclass(frozen=True)
class Outcome:
    """The end of a compression: the search's result and, when it passed, the new version;
    with ``Job.variants``, the release's default model and its variants, registered."""

    source: ModelVersion
    result: SearchResult
    model: ModelVersion | None
    report_json: str
    report_markdown: str
    variant_default: RegisteredVariant | None = None
    variants: tuple[RegisteredVariant, ...] = ()
    variant_notes: tuple[str, ...] = ()


Event = Progress | Outcome


@dataclass(frozen=True)
class _Prepared:
    source: ModelVersion
    model: bytes
    eval_set: EvalSet
    total: int
    objective: Objective
    timer: Timer
    metric: tuple[MetricChoice, ...]
    golden: GoldenMode
    settings: SearchSettings


def parse_objective(text: str) -> Objective:
    return _choice(Objective, text or Objective.BALANCED, what="objective")


def parse_golden(text: str) -> GoldenMode:
    return _choice(GoldenMode, text or GoldenMode.AUTO, what="golden mode")


def _choice(kind: type[E], text: str, *, what: str) -> E:
    """``text`` as a member of ``kind``; ``InvalidInputError`` naming the choices otherwise."""
    try:
        return kind(text)
    except ValueError:
        choices = ", ".join(m.value for m in kind)
        raise InvalidInputError(f"unknown {what} {text!r}: choose one of {choices}") from None


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
        metric = parse_metrics(job.metric)
        if job.metric_module is not None:
            metric_hook.check(job.metric_module)
        golden = parse_golden(job.golden)
        if job.max_drop < 0:
            raise InvalidInputError(f"max accuracy drop must be >= 0, got {job.max_drop:g}")
        settings = self._settings
        if job.time_budget_s is not None:
            if job.time_budget_s < 0:
                raise InvalidInputError(f"time budget must be >= 0, got {job.time_budget_s:g}")
            settings = replace(settings, time_budget_s=job.time_budget_s)
        if job.cores < 0:
            raise InvalidInputError(f"cores must be >= 0, got {job.cores}")
        if job.cores:
            settings = replace(settings, threads=(1, job.cores))
        if not job.eval_data:
            raise InvalidInputError("no eval data: send an .npz with the model's inputs by name")
        try:
            carry = feeds.parse_carry(job.carry)
        except feeds.FeedsError as exc:
            raise InvalidInputError(str(exc)) from exc
        model = self._registry.model_bytes(source)
        eval_set = self._registry.sandbox.call(
            _load_eval_set, job.eval_data, model=model, carry=carry, what="eval data check"
        )
        timer: Timer = LocalTimer()
        if job.profile_on:
            if self._device_timer is None:
                raise NotFoundError("device", job.profile_on)
            timer = self._device_timer(job.profile_on)
        return _Prepared(
            source, model, eval_set, len(pipelines), objective, timer, metric, golden, settings
        )

    def run(self, job: Job, *, cancelled: threading.Event | None = None) -> Iterator[Event]:
        """Progress events, then one ``Outcome``. Checks the request before the first event;
        errors of the search itself are raised from the iterator. Closing the iterator early
        (or setting ``cancelled``) stops the search at once (its process is killed)."""
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
        timer = prepared.timer
        events = self._registry.sandbox.stream(
            _search,
            prepared.model,
            prepared.eval_set,
            recipe=job.recipe or "auto",
            max_drop=job.max_drop,
            objective=prepared.objective,
            timer=timer if isinstance(timer, LocalTimer) else None,
            where=timer.where,
            settings=prepared.settings,
            metric=prepared.metric,
            metric_module=job.metric_module,
            golden=prepared.golden,
            variants=job.variants,
            what="compression search",
            answer=lambda question: timer.measure(*question[:2], threads=question[2]),
            cancelled=cancelled,
        )
        try:
            for event in events:
                if isinstance(event, SearchResult):
                    yield self._register(prepared.source, event)
                    return
                assert isinstance(event, Progress), event
                yield event
        except SandboxError:
            if cancelled.is_set():
                return  # the caller went away: nobody to tell
            raise
        finally:
            cancelled.set()
            events.close()

    def _register(self, source: ModelVersion, result: SearchResult) -> Outcome:
        report_json, report_markdown = result.report_json(), result.report_markdown()
        picked = result.variants
        stored = (
            self._register_variants(source, result, picked, report_json, report_markdown)
            if picked is not None
            else {}
        )
        outcome = Outcome(source, result, None, report_json, report_markdown)
        if result.winner is None or result.model is None:
            log.info("compress %s v%d: no candidate passed", source.name, source.version)
            return self._with_variants(outcome, picked, stored)
        winner = result.winner
        try:
            model = self._register_winner(source, result, report_json, report_markdown)
        except InvalidInputError as exc:  # the registry's own check: the report still returns
            log.error(
                "compress %s v%d: %s won but was refused: %s",
                source.name,
                source.version,
                winner.name,
                exc,
            )
            return self._with_variants(outcome, picked, stored)
        log.info(
            "compress %s v%d: %s won, registered as version %d",
            source.name,
            source.version,
            winner.name,
            model.version,
        )
        stored[winner.name] = model
        return self._with_variants(replace(outcome, model=model), picked, stored)

    def _register_variants(
        self,
        source: ModelVersion,
        result: SearchResult,
        picked: variantset.VariantSet,
        report_json: str,
        report_markdown: str,
    ) -> dict[str, ModelVersion | str]:
        """Each picked candidate but the winner and the original registered once (before the
        winner, which stays the newest version): candidate name -> its version, or why the
        registry refused it."""
        winner = result.winner.name if result.winner is not None else None
        stored: dict[str, ModelVersion | str] = {variantset.ORIGINAL: source}
        for p in (picked.default, *picked.variants):
            if p.candidate in stored or p.candidate == winner or p.model is None:
                continue
            classes = ", ".join(
                q.cls.name if q.cls is not None else "default"
                for q in (picked.default, *picked.variants)
                if q.candidate == p.candidate
            )
            try:
                stored[p.candidate] = self._registry.register_compressed(
                    source,
                    p.model,
                    report_json=report_json,
                    report_markdown=report_markdown,
                    golden_npz=None,  # a release of it computes its own from the inputs
                    transfer=p.transfer
                    if p.transfer is not None and packing.is_packed(p.transfer)
                    else None,
                    description=f"variant {classes}, compressed from version {source.version}:"
                    f" {p.candidate} (drop {p.drop:.2f} points)",
                )
            except InvalidInputError as exc:
                stored[p.candidate] = f"{p.candidate} was refused by the registry: {exc}"
        return stored

    @staticmethod
    def _with_variants(
        outcome: Outcome,
        picked: variantset.VariantSet | None,
        stored: dict[str, ModelVersion | str],
    ) -> Outcome:
        if picked is None:
            return outcome
        notes = list(picked.notes)

        def registered(p: variantset.Pick) -> RegisteredVariant | None:
            model = stored.get(p.candidate, f"{p.candidate} won but was refused by the registry")
            if isinstance(model, str):
                notes.append(model)
                return None
            cls = p.cls
            return RegisteredVariant(
                cls.name if cls is not None else "",
                p.candidate,
                cls.requires if cls is not None else (),
                cls.providers if cls is not None else (),
                model,
            )

        default = registered(picked.default)
        if default is None:  # the fp32 winner was refused: the source version is the default
            default = RegisteredVariant("", variantset.ORIGINAL, (), (), outcome.source)
        made = [v for v in map(registered, picked.variants) if v is not None]
        for v in (default, *made):
            log.info(
                "compress %s v%d: variant %s = %s, version %d",
                outcome.source.name,
                outcome.source.version,
                v.name or "default",
                v.candidate,
                v.model.version,
            )
        return replace(
            outcome,
            variant_default=default,
            variants=tuple(made),
            variant_notes=tuple(dict.fromkeys(notes)),
        )

    def _register_winner(
        self, source: ModelVersion, result: SearchResult, report_json: str, report_markdown: str
    ) -> ModelVersion:
        assert result.winner is not None and result.model is not None
        transfer, winner = result.transfer, result.winner
        return self._registry.register_compressed(
            source,
            result.model,
            report_json=report_json,
            report_markdown=report_markdown,
            golden_npz=result.golden.to_npz() if result.golden is not None else None,
            transfer=transfer if transfer is not None and packing.is_packed(transfer) else None,
            description=f"compressed from version {source.version}: {winner.name} "
            f"(drop {winner.drop:.2f} points)",
        )


def _load_eval_set(
    data: bytes, *, model: bytes, carry: tuple[tuple[str, str], ...] = ()
) -> EvalSet:
    """The eval set, checked against the model, in the sandbox; a model registered before
    external data was refused is refused here."""
    externaldata.refuse_external(model)
    return evaluating.load_eval_set(data, model=model, carry=carry)


@dataclass(frozen=True)
class _AskingTimer:
    """The search's Timer inside the sandbox when timing happens elsewhere: each measurement
    is asked of the controller, which times it with the real Timer (a device's, signed)."""

    channel: Channel
    where: str

    def measure(self, model: bytes, feed: Feed, *, threads: int) -> Latency:
        latency: Latency = self.channel.ask((model, feed, threads))
        return latency


def _search(
    channel: Channel,
    model: bytes,
    eval_set: EvalSet,
    *,
    recipe: str,
    max_drop: float,
    objective: Objective,
    timer: LocalTimer | None,
    where: str,
    settings: SearchSettings,
    metric: tuple[MetricChoice, ...],
    golden: GoldenMode,
    metric_module: MetricModule | None = None,
    variants: bool = False,
) -> SearchResult:
    """The search, in the sandbox process: progress goes out over ``channel`` as it comes. A
    user's metric module runs in a confined process of its own, started here (``metric_hook``);
    this process only ever sees the JSON float it answers."""
    with contextlib.ExitStack() as stack:
        hook = (
            stack.enter_context(metric_hook.MetricProcess(metric_module))
            if metric_module is not None
            else None
        )
        started = time.monotonic()
        left = [0.0]  # the latest estimate for what is left

        def on_start(up: Upcoming) -> None:
            left[0] = min(up.remaining_s, up.budget_left_s)
            budget = (
                ""
                if up.budget_left_s == float("inf")
                else f", {up.budget_left_s:.0f} s of budget left"
            )
            channel.emit(
                Progress(
                    up.done,
                    up.total,
                    f"candidate {up.done + 1}/{up.total} {up.name}: about {up.estimate_s:.0f} s; "
                    f"about {left[0]:.0f} s for the rest{budget}",
                    elapsed_s=time.monotonic() - started,
                    remaining_s=left[0],
                )
            )

        def on_candidate(done: int, total: int, record: CandidateRecord) -> None:
            left[0] = max(0.0, left[0] - record.seconds)
            channel.emit(
                Progress(
                    done,
                    total,
                    candidate=record,
                    elapsed_s=time.monotonic() - started,
                    remaining_s=left[0],
                )
            )

        return search(
            model,
            eval_set,
            recipe=recipe,
            max_drop=max_drop,
            objective=objective,
            timer=timer or _AskingTimer(channel, where),
            settings=settings,
            metric=metric,
            hook=hook,
            golden=golden,
            on_candidate=on_candidate,
            on_start=on_start,
            variants=variants,
        )
