"""The accuracy-gated search: try candidate pipelines, keep the best one that passes the gate.

A candidate passes when its metric drops by at most ``max_drop`` points and, unless the
objective is ``size``, it is not slower than the original. Speed is a ratio measured with the
original and the candidate timed in interleaved rounds (``speedstats``, ``timing.compare``),
with a 95% confidence interval, at 1 thread and at the timing host's core count (``threads``;
``--cores``): ``latency`` needs the candidate faster beyond the noise (the interval's upper
bound below 1) at every thread count; ``balanced`` fails a candidate slower beyond the noise
(and by more than ``speed_tolerance``) at any of them, and credits a speed ratio only where
it is beyond the noise (otherwise the two count as the same speed). Passing candidates are
ranked by the objective: ``balanced`` minimises log(speed ratio) + log(transfer ratio),
``latency`` speed then size, ``size`` transfer size then speed; the winner must beat the
original on its objective. Every candidate, skipped and
failed ones included, is recorded with the reason, for the report.

The search keeps to a time budget (``time_budget_s``): ``auto`` runs its pipelines cheapest
first (``recipes.cost``); each candidate's duration is estimated from the original's
evaluation time and the candidates measured so far, and one that would not finish within the
budget is not started (recorded with the reason), so the search ends near the budget with the
best candidate that passed so far. A candidate that raises anything is recorded as failed with
the reason and the search goes on. The winner must pass ``onnx.checker`` and run in ONNX
Runtime (``graphs.validate_model``); one that does not is recorded as failed and the next best
passing candidate wins. Golden data for the winner comes from the winner itself
(``winnergolden.golden_for``) and is attached per ``golden`` (``auto``: when its tolerances hold).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

from . import evaluating, graphs, recipes, timing, variantset
from .errors import InvalidInputError, PassSkippedError
from .evaluating import EvalSet, MetricChoice, MetricHook, OutputScore, Reference
from .graphs import Feed
from .records import PassRecord, Technique
from .sensitivity import SIMULATED, LayerSensitivity, layer_sensitivity
from .speedstats import Plan, SpeedRatio
from .timing import Latency, LocalTimer, Timer, host_cores
from .winnergolden import Golden, GoldenMode, golden_for

log = logging.getLogger(__name__)


class Objective(StrEnum):
    BALANCED = "balanced"
    LATENCY = "latency"
    SIZE = "size"


@dataclass(frozen=True)
class SearchSettings:
    threads: tuple[int, ...] = (1, 0)
    """Intra-op thread counts to time; the first one ranks the candidates. 0 (not first): the
    timing host's cores (this machine's, or what the ``--profile-on`` device reports)."""
    timing_batch: int = 1
    """Samples per timed run (1: an edge device answering one request)."""
    speed_tolerance: float = 0.05
    """For ``balanced``: a candidate up to this much slower than the original (beyond the
    noise) still counts as 'not slower'."""
    speed: Plan = field(default_factory=Plan)
    """The speed gate's interleaved timing, per candidate and thread count: rounds until the
    ratio's confidence interval is within +-``target``, or ``max_rounds``, or ``budget_s``."""
    sensitivity_layers: int = 12
    """Largest layers measured for per-layer sensitivity; 0 turns it off."""
    golden_count: int = 8
    """Golden samples embedded in the release for device health checks."""
    screen_samples: int = 64
    """A candidate is first scored on this many samples (when the eval set has at least 4x
    as many); one that drops more than max(4 x the gate, the gate + 10 points) there fails
    without the full evaluation and timing. 0 = off."""
    distill_epochs: int = 40
    """Epochs of student training for ``distill`` candidates."""
    time_budget_s: float = 600.0
    """Wall-clock seconds for the whole search; candidates that would not fit are not run;
    0 = no budget."""


@dataclass(frozen=True)
class CandidateRecord:
    name: str
    techniques: tuple[str, ...]
    steps: tuple[PassRecord, ...]
    size_bytes: int
    transfer_bytes: int
    latency: tuple[Latency, ...]
    metric: str
    value: float
    drop: float
    passed_gate: bool
    verdict: str  # why it passed, failed or was skipped, in one line
    notes: tuple[str, ...] = ()
    sensitivity: tuple[LayerSensitivity, ...] = ()
    seconds: float = 0.0  # how long the candidate took (compress, evaluate, time)
    speed: tuple[SpeedRatio, ...] = ()  # vs the original, per thread count (interleaved)
    outputs: tuple[OutputScore, ...] = ()  # each judged output's metric, value and drop

    @property
    def p50_ms(self) -> float:
        return self.latency[0].p50_ms if self.latency else math.nan

    @property
    def speed_ratio(self) -> SpeedRatio | None:
        """At the first thread count (1)."""
        return self.speed[0] if self.speed else None

    @property
    def speed_ratio_nt(self) -> SpeedRatio | None:
        """At the last thread count (the device class's cores), when more than one is timed."""
        return self.speed[-1] if len(self.speed) > 1 else None


@dataclass(frozen=True)
class Upcoming:
    """The candidate about to run: ``done`` of ``total`` finished, its estimated duration, the
    estimate for all that is left, and the budget left (inf without a budget)."""

    done: int
    total: int
    name: str
    estimate_s: float
    remaining_s: float
    budget_left_s: float


@dataclass(frozen=True)
class SearchResult:
    original: CandidateRecord
    candidates: tuple[CandidateRecord, ...]
    winner: CandidateRecord | None
    model: bytes | None  # the winner's ONNX bytes
    transfer: bytes | None  # what to send to devices: the packed container or the model
    golden: Golden | None
    objective: Objective
    max_drop: float
    timer: str
    extra: dict[str, str] = field(default_factory=dict)
    elapsed_s: float = 0.0
    budget_s: float = 0.0  # 0: none
    stopped: str = ""  # why candidates were left out ("the time budget"), "" when all ran
    golden_note: str = ""  # why golden data is (not) attached
    variants: variantset.VariantSet | None = None  # asked for: models per hardware class

    @property
    def passed(self) -> bool:
        return self.winner is not None

    def report_json(self) -> str:
        from .reporting import report_json

        return report_json(self)

    def report_markdown(self) -> str:
        from .reporting import report_markdown

        return report_markdown(self)


def search(
    model: bytes,
    eval_set: EvalSet,
    *,
    recipe: str = "auto",
    max_drop: float = 1.0,
    objective: Objective = Objective.BALANCED,
    timer: Timer | None = None,
    calibration: Sequence[Feed] | None = None,
    settings: SearchSettings = SearchSettings(),
    metric: MetricChoice | Sequence[MetricChoice] | None = None,
    hook: MetricHook | None = None,
    golden: GoldenMode = GoldenMode.AUTO,
    on_candidate: Callable[[int, int, CandidateRecord], None] | None = None,
    on_start: Callable[[Upcoming], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    variants: bool = False,
) -> SearchResult:
    """``on_candidate(done, total, record)`` runs after each candidate is recorded (progress),
    ``on_start`` before each one runs; an exception either raises stops the search and
    propagates (a cancelled caller). ``variants``: also pick the models per hardware class
    from the candidates run (``variantset``)."""
    started = clock()
    if max_drop < 0:
        raise InvalidInputError(f"max accuracy drop must be >= 0, got {max_drop}")
    graphs.load(model)
    pipelines = recipes.parse_recipe(recipe)
    if recipe.strip() == "auto":
        pipelines = tuple(sorted(pipelines, key=recipes.cost))
    runner, original, eval_s, time_s = _prepare(
        model,
        eval_set,
        metric=() if metric is None else metric,
        hook=hook,
        calibration=calibration,
        timer=timer or LocalTimer(),
        max_drop=max_drop,
        objective=objective,
        settings=settings,
        clock=clock,
    )
    metric_name, sens_cache, timer = original.metric, runner.sens_cache, runner.timer
    budget = settings.time_budget_s if settings.time_budget_s > 0 else math.inf
    estimates = [eval_s * recipes.cost(p) + 2 * time_s for p in pipelines]
    spent_est = spent_real = 0.0  # to scale the estimates by what candidates really took
    records: list[CandidateRecord] = []
    outputs: dict[str, recipes.PipelineResult] = {}
    stopped = ""
    for i, pipeline in enumerate(pipelines):
        scale = spent_real / spent_est if spent_est > 0 else 1.0
        if settings.sensitivity_layers > 0 and any(
            s.technique in SIMULATED and (s.technique, _amount(s)) not in sens_cache
            for s in pipeline.steps
        ):
            estimates[i] += eval_s * settings.sensitivity_layers  # one evaluation per layer
        estimate = estimates[i] * scale
        left = budget - (clock() - started)
        techniques = tuple(str(s.technique) for s in pipeline.steps)
        if estimate > left:
            stopped = "the time budget"
            verdict = (
                f"not run: about {estimate:.0f} s needed, {max(left, 0):.0f} s of the "
                f"{budget:.0f} s time budget left"
            )
            records.append(_not_run(pipeline.name, techniques, metric_name, verdict))
        else:
            if on_start is not None:
                remaining = sum(estimates[i:]) * scale
                on_start(Upcoming(i, len(pipelines), pipeline.name, estimate, remaining, left))
            t0 = clock()
            record, out = runner.candidate(pipeline, techniques)
            took = clock() - t0
            records.append(replace(record, seconds=took))
            if out is not None:
                outputs[pipeline.name] = out
            spent_est += estimates[i]
            spent_real += took
        if on_candidate is not None:
            on_candidate(len(records), len(pipelines), records[-1])
    winner = _validated_winner(original, records, outputs, objective, eval_set)
    chosen = outputs[winner.name] if winner is not None else None
    data, note = (
        _golden(model, chosen.model, eval_set, golden, settings)
        if chosen is not None
        else (None, "no winner")
    )
    picked = (
        variantset.pick(
            records,
            outputs,
            winner=winner.name if winner is not None else None,
            ranked=[c.name for c in _ranked(original, records, objective)],
            max_drop=max_drop,
            eval_set=eval_set,
        )
        if variants
        else None
    )
    return SearchResult(
        original,
        tuple(records),
        winner,
        chosen.model if chosen is not None else None,
        chosen.transfer if chosen is not None else None,
        data,
        objective,
        max_drop,
        timer.where,
        elapsed_s=clock() - started,
        budget_s=0.0 if math.isinf(budget) else budget,
        stopped=stopped,
        golden_note=note,
        variants=picked,
    )


def _prepare(
    model: bytes,
    eval_set: EvalSet,
    *,
    metric: MetricChoice | Sequence[MetricChoice],
    hook: MetricHook | None,
    calibration: Sequence[Feed] | None,
    timer: Timer,
    max_drop: float,
    objective: Objective,
    settings: SearchSettings,
    clock: Callable[[], float],
) -> tuple[_Runner, CandidateRecord, float, float]:
    """The original's reference outputs and timing: (runner, original's record, seconds one
    evaluation took, seconds timing took)."""
    started = clock()
    ref = evaluating.reference(model, eval_set, metric=metric, hook=hook)
    eval_s = max(clock() - started, 1e-3)
    cal = tuple(calibration) if calibration is not None else eval_set.batches
    if calibration is not None:
        evaluating.validate(model, cal, what="calibration")
    first = eval_set.batches[0]
    feed = {  # a feed of the feeds layout is timed as it is: it has no batch axis
        k: v if k in eval_set.broadcast or eval_set.per_feed else v[: settings.timing_batch]
        for k, v in first.items()
    }

    def passes_gate(candidate: bytes) -> bool:
        return evaluating.score(candidate, eval_set, ref).drop <= max_drop

    ctx = recipes.Context(cal, passes_gate, settings.distill_epochs)
    t0 = clock()
    first_latency = timer.measure(model, feed, threads=settings.threads[0] or 1)
    cores = first_latency.cores or host_cores()  # the device's, from its Benchmark reply
    threads = tuple(dict.fromkeys(t if t > 0 else cores for t in settings.threads))
    base_latency = (
        first_latency,
        *(timer.measure(model, feed, threads=t) for t in threads[1:]),
    )
    time_s = clock() - t0
    original = CandidateRecord(
        "original",
        ("fp32",),
        (),
        len(model),
        len(model),
        base_latency,
        ref.score.label,
        ref.score.value,
        0.0,
        True,
        "reference",
        outputs=ref.score.outputs,
    )
    runner = _Runner(
        model,
        eval_set,
        ref,
        ctx,
        timer,
        feed,
        base_latency,
        max_drop,
        objective,
        settings,
        {},
        threads,
    )
    return runner, original, eval_s, time_s


def _validated_winner(
    original: CandidateRecord,
    records: list[CandidateRecord],
    outputs: dict[str, recipes.PipelineResult],
    objective: Objective,
    eval_set: EvalSet,
) -> CandidateRecord | None:
    """The best passing candidate that ``onnx.checker`` accepts and ONNX Runtime runs; those
    that fail are marked failed in ``records`` (in place), with the reason."""
    for candidate in _ranked(original, records, objective):
        try:
            graphs.validate_model(outputs[candidate.name].model, eval_set.batches)
        except InvalidInputError as exc:
            at = records.index(candidate)
            records[at] = replace(candidate, passed_gate=False, verdict=f"fails validation: {exc}")
            log.warning("compression winner %s fails validation: %s", candidate.name, exc)
            continue
        return candidate
    return None


@dataclass(frozen=True)
class _Runner:
    """What every candidate of one search is run against."""

    model: bytes
    eval_set: EvalSet
    ref: Reference
    ctx: recipes.Context
    timer: Timer
    feed: Feed
    base_latency: tuple[Latency, ...]
    max_drop: float
    objective: Objective
    settings: SearchSettings
    sens_cache: dict[tuple[Technique, float], tuple[LayerSensitivity, ...]]
    threads: tuple[int, ...]  # resolved: the first measured, 0 replaced by the host's cores

    def speed(self, candidate: bytes) -> tuple[tuple[SpeedRatio, ...], tuple[Latency, ...]]:
        """The candidate against the original, interleaved, at each thread count."""
        pairs = [
            timing.compare(
                self.timer, self.model, candidate, self.feed, threads=t, plan=self.settings.speed
            )
            for t in self.threads
        ]
        return tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)

    def candidate(
        self, pipeline: recipes.Pipeline, techniques: tuple[str, ...]
    ) -> tuple[CandidateRecord, recipes.PipelineResult | None]:
        """Compress, score and time one pipeline; whatever it raises becomes a failed record."""
        return _candidate(self, pipeline, techniques)


def _candidate(
    r: _Runner, pipeline: recipes.Pipeline, techniques: tuple[str, ...]
) -> tuple[CandidateRecord, recipes.PipelineResult | None]:
    model, eval_set, ref, ctx, timer = r.model, r.eval_set, r.ref, r.ctx, r.timer
    max_drop, objective, settings = r.max_drop, r.objective, r.settings
    sens_cache = r.sens_cache
    metric = ref.score.label
    log.info("compression candidate %s", pipeline.name)
    sens: tuple[LayerSensitivity, ...] = ()
    try:
        sens = _sensitivity(model, eval_set, ref, pipeline, settings=settings, cache=sens_cache)
        out = recipes.run_pipeline(model, pipeline, ctx)
        screened = _screen(out.model, eval_set, ref, settings.screen_samples)
        hopeless = max(4 * max_drop, max_drop + 10)  # far beyond a few samples' noise
        if screened is not None and screened.drop > hopeless:
            verdict = (
                f"fails the screen: drop {screened.drop:.2f} > {hopeless:g} points on "
                f"the first {settings.screen_samples} samples"
            )
            notes = tuple(n for rec in out.records for n in rec.notes)
            screened_record = CandidateRecord(
                pipeline.name,
                techniques,
                out.records,
                len(out.model),
                len(out.transfer),
                (),
                screened.label,
                screened.value,
                screened.drop,
                False,
                verdict,
                notes,
                sens,
                outputs=screened.outputs,
            )
            return screened_record, None
        score = evaluating.score(out.model, eval_set, ref)
        speed, latency = r.speed(out.model)
    except PassSkippedError as exc:
        return _skipped(
            pipeline.name, techniques=techniques, metric=metric, exc=exc, sens=sens
        ), None
    except Exception as exc:  # a pass or ORT failing on a real model must not end the search
        log.warning("compression candidate %s failed", pipeline.name, exc_info=True)
        return _not_run(pipeline.name, techniques, metric, f"failed: {_reason(exc)}"), None
    passed, verdict, notes = _gate(
        score.drop, speed, max_drop, objective, settings, where=timer.where
    )
    for rec in out.records:
        notes += rec.notes
    record = CandidateRecord(
        pipeline.name,
        techniques,
        out.records,
        len(out.model),
        len(out.transfer),
        latency,
        score.label,
        score.value,
        score.drop,
        passed,
        verdict,
        tuple(notes),
        sens,
        speed=speed,
        outputs=score.outputs,
    )
    return record, out


def _golden(
    original: bytes,
    compressed: bytes,
    eval_set: EvalSet,
    mode: GoldenMode,
    settings: SearchSettings,
) -> tuple[Golden | None, str]:
    if mode is GoldenMode.NEVER or settings.golden_count <= 0:
        return None, "not asked for"
    try:
        data = golden_for(original, compressed, eval_set, count=settings.golden_count)
    except Exception as exc:  # golden data is a convenience: a failure must not lose the winner
        log.warning("golden data for the winner failed", exc_info=True)
        return None, f"could not be made: {_reason(exc)}"
    if mode is GoldenMode.ALWAYS or data.holds:
        return data, data.note
    return None, f"not attached: {data.note} (ask with --golden always)"


def _screen(
    candidate: bytes, eval_set: EvalSet, ref: Reference, samples: int
) -> evaluating.Score | None:
    """The candidate's score on the first ``samples`` samples; None when not worth it."""
    if samples <= 0 or eval_set.size < 4 * samples:
        return None
    return evaluating.score(candidate, *evaluating.head(eval_set, ref, samples))


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0][:300] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _not_run(name: str, techniques: tuple[str, ...], metric: str, verdict: str) -> CandidateRecord:
    return CandidateRecord(
        name, techniques, (), 0, 0, (), metric, math.nan, math.nan, False, verdict
    )


def _gate(
    drop: float,
    speed: Sequence[SpeedRatio],
    max_drop: float,
    objective: Objective,
    settings: SearchSettings,
    *,
    where: str = "this CPU",
) -> tuple[bool, str, tuple[str, ...]]:
    notes: tuple[str, ...] = ()
    slower = [s for s in speed if s.slower and s.ratio > 1 + settings.speed_tolerance]
    if slower:
        notes = (
            f"did not pay off in speed on {where}: {slower[-1].describe()} "
            "(candidate / original latency)",
        )
    if drop > max_drop:
        return False, f"fails: drop {drop:.2f} > {max_drop:g} points", notes
    if objective is Objective.SIZE:
        return True, "passes", notes
    if slower:
        return False, f"fails: slower than the original: {slower[-1].describe()}", notes
    not_faster = [s for s in speed if not s.faster]
    if objective is Objective.LATENCY and not_faster:
        return False, f"fails: not faster beyond the noise: {not_faster[0].describe()}", notes
    return True, "passes", notes


def _speed_gain(c: CandidateRecord, original: CandidateRecord) -> float:
    """log(speed ratio), worst over the thread counts, counting a ratio only where it is
    beyond the noise (0 where the interval contains 1); without interleaved timing, the p50s."""
    if c.speed:
        return max(math.log(s.ratio) if s.faster or s.slower else 0.0 for s in c.speed)
    return math.log(max(c.p50_ms, 1e-9) / max(original.p50_ms, 1e-9))


def _score(
    c: CandidateRecord, original: CandidateRecord, objective: Objective
) -> tuple[float, ...]:
    lat = _speed_gain(c, original)
    size = math.log(c.transfer_bytes / original.transfer_bytes)
    if objective is Objective.LATENCY:
        return (round(lat, 2), size, c.drop)
    if objective is Objective.SIZE:
        return (round(size, 3), lat, c.drop)
    return (lat + size, c.drop)


def _ranked(
    original: CandidateRecord, records: list[CandidateRecord], objective: Objective
) -> list[CandidateRecord]:
    """Passing candidates that beat the original on the objective, best first."""
    passing = [c for c in records if c.passed_gate]
    gains = [c for c in passing if _score(c, original, objective)[0] < -0.01]
    return sorted(gains, key=lambda c: _score(c, original, objective))


def _skipped(
    name: str,
    *,
    techniques: tuple[str, ...],
    metric: str,
    exc: PassSkippedError,
    sens: tuple[LayerSensitivity, ...],
) -> CandidateRecord:
    return CandidateRecord(
        name,
        techniques,
        (),
        0,
        0,
        (),
        metric,
        math.nan,
        math.nan,
        False,
        f"skipped: {exc.technique}: {exc.reason}",
        (),
        sens,
    )


def _sensitivity(
    model: bytes,
    eval_set: EvalSet,
    ref: Reference,
    pipeline: recipes.Pipeline,
    *,
    settings: SearchSettings,
    cache: dict[tuple[Technique, float], tuple[LayerSensitivity, ...]],
) -> tuple[LayerSensitivity, ...]:
    if settings.sensitivity_layers <= 0:
        return ()
    out: list[LayerSensitivity] = []
    for step in pipeline.steps:
        if step.technique not in SIMULATED:
            continue
        amount = _amount(step)
        key = (step.technique, amount)
        if key not in cache:
            cache[key] = layer_sensitivity(
                model,
                eval_set,
                ref,
                technique=step.technique,
                amount=amount,
                max_layers=settings.sensitivity_layers,
            )
        out += cache[key]
    return tuple(out)


def _amount(step: recipes.Step) -> float:
    return float(step.params.get("amount", step.params.get("sparsity", 0.0)) or 0.0)
