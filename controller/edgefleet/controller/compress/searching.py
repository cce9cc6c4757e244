"""The accuracy-gated search: try candidate pipelines, keep the best one that passes the gate.

A candidate passes when its metric drops by at most ``max_drop`` points and, unless the
objective is ``size``, it is not slower than the original (measured, with ``speed_tolerance``
for timing noise). Passing candidates are ranked by the objective: ``balanced`` minimises
log(latency ratio) + log(transfer ratio), ``latency`` latency then size, ``size`` transfer size
then latency; the winner must beat the original on its objective. Every candidate, skipped and
failed ones included, is recorded with the reason, for the report.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from . import evaluating, graphs, recipes
from .errors import InvalidInputError, PassSkippedError
from .evaluating import EvalSet, Reference
from .golden import Golden, select_golden
from .graphs import Feed
from .records import PassRecord, Technique
from .sensitivity import SIMULATED, LayerSensitivity, layer_sensitivity
from .timing import Latency, LocalTimer, Timer

log = logging.getLogger(__name__)


class Objective(StrEnum):
    BALANCED = "balanced"
    LATENCY = "latency"
    SIZE = "size"


@dataclass(frozen=True)
class SearchSettings:
    threads: tuple[int, ...] = (1, max(2, os.cpu_count() or 1))
    """Intra-op thread counts to time; the first one ranks the candidates."""
    timing_batch: int = 1
    """Samples per timed run (1: an edge device answering one request)."""
    speed_tolerance: float = 0.05
    """A candidate up to this much slower than the original counts as 'not slower' (noise)."""
    sensitivity_layers: int = 12
    """Largest layers measured for per-layer sensitivity; 0 turns it off."""
    golden_count: int = 8
    """Golden samples embedded in the release for device health checks."""
    distill_epochs: int = 40
    """Epochs of student training for ``distill`` candidates."""


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

    @property
    def p50_ms(self) -> float:
        return self.latency[0].p50_ms if self.latency else math.nan


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
    on_candidate: Callable[[int, int, CandidateRecord], None] | None = None,
) -> SearchResult:
    """``on_candidate(done, total, record)`` runs after each candidate is recorded (progress); an
    exception it raises stops the search and propagates (a cancelled caller)."""
    if max_drop < 0:
        raise InvalidInputError(f"max accuracy drop must be >= 0, got {max_drop}")
    graphs.load(model)
    pipelines = recipes.parse_recipe(recipe)
    ref = evaluating.reference(model, eval_set)
    cal = tuple(calibration) if calibration is not None else eval_set.batches
    if calibration is not None:
        evaluating.validate(model, cal, what="calibration")
    timer = timer or LocalTimer()
    first = eval_set.batches[0]
    feed = {k: v[: settings.timing_batch] for k, v in first.items()}

    def passes_gate(candidate: bytes) -> bool:
        return evaluating.score(candidate, eval_set, ref).drop <= max_drop

    ctx = recipes.Context(cal, passes_gate, settings.distill_epochs)
    base_latency = tuple(timer.measure(model, feed, threads=t) for t in settings.threads)
    original = CandidateRecord(
        "original",
        ("fp32",),
        (),
        len(model),
        len(model),
        base_latency,
        str(ref.score.metric),
        ref.score.value,
        0.0,
        True,
        "reference",
    )
    sens_cache: dict[tuple[Technique, float], tuple[LayerSensitivity, ...]] = {}
    records: list[CandidateRecord] = []
    outputs: dict[str, recipes.PipelineResult] = {}
    for pipeline in pipelines:
        log.info("compression candidate %s", pipeline.name)
        sens = _sensitivity(model, eval_set, ref, pipeline, settings=settings, cache=sens_cache)
        techniques = tuple(str(s.technique) for s in pipeline.steps)
        try:
            out = recipes.run_pipeline(model, pipeline, ctx)
        except PassSkippedError as exc:
            records.append(
                _skipped(
                    pipeline.name,
                    techniques=techniques,
                    metric=str(ref.score.metric),
                    exc=exc,
                    sens=sens,
                )
            )
            if on_candidate is not None:
                on_candidate(len(records), len(pipelines), records[-1])
            continue
        score = evaluating.score(out.model, eval_set, ref)
        latency = tuple(timer.measure(out.model, feed, threads=t) for t in settings.threads)
        ratio = latency[0].p50_ms / max(base_latency[0].p50_ms, 1e-9)
        passed, verdict, notes = _gate(score.drop, ratio, max_drop, objective, settings)
        for rec in out.records:
            notes += rec.notes
        records.append(
            CandidateRecord(
                pipeline.name,
                techniques,
                out.records,
                len(out.model),
                len(out.transfer),
                latency,
                str(score.metric),
                score.value,
                score.drop,
                passed,
                verdict,
                tuple(notes),
                sens,
            )
        )
        outputs[pipeline.name] = out
        if on_candidate is not None:
            on_candidate(len(records), len(pipelines), records[-1])
    winner = _choose(original, records, objective)
    if winner is None:
        return SearchResult(
            original, tuple(records), None, None, None, None, objective, max_drop, timer.where
        )
    chosen = outputs[winner.name]
    golden = select_golden(model, chosen.model, eval_set, count=settings.golden_count)
    return SearchResult(
        original,
        tuple(records),
        winner,
        chosen.model,
        chosen.transfer,
        golden,
        objective,
        max_drop,
        timer.where,
    )


def _gate(
    drop: float, ratio: float, max_drop: float, objective: Objective, settings: SearchSettings
) -> tuple[bool, str, tuple[str, ...]]:
    notes: tuple[str, ...] = ()
    slower = ratio > 1 + settings.speed_tolerance
    if slower:
        notes = (f"did not pay off in speed: {ratio:.2f}x the original's latency on this CPU",)
    if drop > max_drop:
        return False, f"fails: drop {drop:.2f} > {max_drop:g} points", notes
    if slower and objective is not Objective.SIZE:
        return False, f"fails: {ratio:.2f}x slower than the original", notes
    return True, "passes", notes


def _score(
    c: CandidateRecord, original: CandidateRecord, objective: Objective
) -> tuple[float, ...]:
    lat = math.log(max(c.p50_ms, 1e-9) / max(original.p50_ms, 1e-9))
    size = math.log(c.transfer_bytes / original.transfer_bytes)
    if objective is Objective.LATENCY:
        return (round(lat, 2), size, c.drop)
    if objective is Objective.SIZE:
        return (round(size, 3), lat, c.drop)
    return (lat + size, c.drop)


def _choose(
    original: CandidateRecord, records: list[CandidateRecord], objective: Objective
) -> CandidateRecord | None:
    passing = [c for c in records if c.passed_gate]
    gains = [c for c in passing if _score(c, original, objective)[0] < -0.01]
    return min(gains, key=lambda c: _score(c, original, objective)) if gains else None


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
        amount = float(step.params.get("amount", step.params.get("sparsity", 0.0)) or 0.0)
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
