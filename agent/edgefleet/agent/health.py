"""The agent's health decisions: before activation, during the health window, at start.

Pure, like ``reconcile``: the shell (``checking``, ``watching``, ``restoring``) measures, and
``switching`` carries out the ``RollBack`` actions; these functions only judge what was
measured. Time comes in as numbers.

* ``precheck_problem``: a staged release may be activated when its golden outputs pass (or,
  without golden data, its smoke outputs are finite) and the median latency of its timed runs
  is within ``latency_budget_ms``.
* ``judge_window``: after activation with ``health_window_s`` > 0 the device watches the
  release; each checkup ends in ``Watch`` (check again later), ``Passed`` or the action
  ``RollBack``.
  Failure comes first from a crash loop (runtime failures reaching ``max_load_failures``),
  then golden outputs, then the p95 of live Predict latency against the budget; a window
  passes only at a checkup after its whole duration with nothing wrong.
* ``start_plan``: at start, an open window means the release never passed (the agent died or
  was stopped while watching it): roll back at once. Otherwise the active slot is loaded,
  unless it already failed to load (or the agent died loading it) ``max_load_failures`` times
  in a row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edgefleet.common.types import HealthPolicy

DEFAULT_MAX_LOAD_FAILURES = HealthPolicy().max_load_failures
MIN_LIVE_SAMPLES = 20
"""Live Predict latencies needed before their p95 is judged: fewer say too little."""


def failure_limit(policy: HealthPolicy) -> int:
    """The crash-loop limit ``K``; a policy without one (0) gets the default."""
    return policy.max_load_failures if policy.max_load_failures > 0 else DEFAULT_MAX_LOAD_FAILURES


def check_interval(duration_s: float) -> float:
    """Seconds between checkups of a window: about ten per window, 0.25 s to 5 s apart."""
    return min(max(duration_s / 10.0, 0.25), 5.0)


@dataclass(frozen=True)
class Latency:
    """Latencies measured by the shell (milliseconds)."""

    samples: int
    median_ms: float
    p95_ms: float


def precheck_problem(
    policy: HealthPolicy, *, output_problems: Sequence[str], latency: Latency
) -> str:
    """Why a staged release must not be activated; "" when it may be."""
    if output_problems:
        return "; ".join(output_problems)
    budget = policy.latency_budget_ms
    if budget > 0 and latency.samples and latency.median_ms > budget:
        return (
            f"median latency {latency.median_ms:.3f} ms (p95 {latency.p95_ms:.3f} ms, "
            f"{latency.samples} runs) is over the budget of {budget:g} ms"
        )
    return ""


# --- the health window -----------------------------------------------------------------------


@dataclass(frozen=True)
class Checkup:
    """What the shell measured at one checkup of a window."""

    elapsed_s: float  # since activation
    output_problems: tuple[str, ...] = ()  # of the golden (or smoke) run just made
    live: Latency | None = None  # live Predict latencies of the release since activation
    runtime_failures: int = 0  # since activation (persisted across checkups)
    last_failure: str = ""
    stopped: str = ""  # the runtime is gone for good (a container exited): why; "" running


@dataclass(frozen=True)
class Watch:
    """Nothing wrong so far: check again in ``after_s`` seconds."""

    after_s: float


@dataclass(frozen=True)
class Passed:
    """The whole window went by with nothing wrong: the release is proven."""


@dataclass(frozen=True)
class RollBack:
    """Go back to the previous slot (``switching`` carries it out): ``reason`` says why."""

    reason: str


Verdict = Watch | Passed | RollBack


def judge_window(policy: HealthPolicy, checkup: Checkup, *, duration_s: float) -> Verdict:
    limit = failure_limit(policy)
    if checkup.stopped:
        return RollBack(f"the runtime stopped in the health window: {checkup.stopped}")
    if checkup.runtime_failures >= limit:
        return RollBack(
            f"crash loop: the runtime failed {checkup.runtime_failures} times in the health "
            f"window (limit {limit}); last: {checkup.last_failure}"
        )
    if checkup.output_problems:
        return RollBack("golden check failed: " + "; ".join(checkup.output_problems))
    budget, live = policy.latency_budget_ms, checkup.live
    judged = budget > 0 and live is not None and live.samples >= MIN_LIVE_SAMPLES
    if judged and live is not None and live.p95_ms > budget:
        return RollBack(
            f"live p95 latency {live.p95_ms:.3f} ms over {live.samples} Predict calls is "
            f"over the budget of {budget:g} ms"
        )
    left = duration_s - checkup.elapsed_s
    if left <= 0:
        return Passed()
    return Watch(min(check_interval(duration_s), left))


# --- start-up ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadActive:
    """Load the active slot (count the attempt first, so a crash while loading counts)."""


StartPlan = LoadActive | RollBack


def start_plan(
    policy: HealthPolicy | None = None,
    *,
    release: str,
    window_open: bool,
    load_failures: int,
    last_failure: str = "",
) -> StartPlan:
    """What to do with the active slot at start (``policy``: its verified manifest's)."""
    if window_open:
        return RollBack(
            f"the agent restarted during the health window of {release}, which never passed"
        )
    limit = failure_limit(policy or HealthPolicy())
    if load_failures >= limit:
        why = f"; last: {last_failure}" if last_failure else " (the agent died while loading it)"
        return RollBack(f"crash loop: {release} failed to load {load_failures} times{why}")
    return LoadActive()
