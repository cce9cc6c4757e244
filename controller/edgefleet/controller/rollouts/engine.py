"""The rollout engine: a pure function of (rollout, fleet reports, clock) -> (rollout, commands).

DESIGN.md section 5: ``pending -> canary -> wave N -> ... -> succeeded``, or ``paused``, or, once
aborted (by an operator or past ``max_failures``), ``rolling_back -> rolled_back``: an abort is a
transition, not a phase a rollout rests in. Each call to ``step`` looks at what the devices
report, moves each device along (sent -> healthy | failed), checks the abort threshold, sends
the next devices when a step has baked, and on abort sends every device it touched back to the
release it ran before. Devices it never reached are never touched. The shell persists the
returned rollout and carries out the commands; generations are chosen here, strictly above
anything issued to or applied by the device, so anti-replay holds for rollbacks too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from edgefleet.controller.rollouts import explaining
from edgefleet.controller.rollouts.strategy import Kind, Strategy


class RolloutPhase(StrEnum):
    PENDING = "pending"
    CANARY = "canary"
    WAVE = "wave"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"

    @property
    def finished(self) -> bool:
        return self in (RolloutPhase.SUCCEEDED, RolloutPhase.ROLLED_BACK)


class TargetState(StrEnum):
    WAITING = "waiting"  # not sent yet
    SENT = "sent"  # desired state published, no verdict yet
    HEALTHY = "healthy"  # runs the release and passes the gates
    FAILED = "failed"  # refused, rolled back by itself, failed a gate, or timed out
    ROLLING_BACK = "rolling_back"  # sent back to its previous release
    REVERTED = "reverted"  # confirmed back on its previous release (or nothing to go back to)


TOUCHED = (TargetState.SENT, TargetState.HEALTHY, TargetState.FAILED)
NO_PREVIOUS = "no previous release"


@dataclass(frozen=True)
class Report:
    """What one device says now (from its retained status and latest telemetry)."""

    device_id: str
    active_release: str = ""
    phase: str = ""  # InstallPhase value; "active" once the device's health window passed
    generation_applied: int = 0
    last_desired: int = 0  # the last generation the controller issued this device
    last_error: str = ""
    metrics_release: str = ""  # the release the latency/error figures below were measured on
    p95_ms: float | None = None
    error_rate: float | None = None


@dataclass(frozen=True)
class Target:
    device_id: str
    state: TargetState = TargetState.WAITING
    generation: int = 0
    sent_at: float = 0.0
    previous_release: str = ""
    baseline_p95_ms: float | None = None
    reason: str = ""


@dataclass(frozen=True)
class Rollout:
    id: str
    fleet: str
    release: str
    strategy: Strategy
    targets: tuple[Target, ...]
    phase: RolloutPhase = RolloutPhase.PENDING
    step: int = 0
    step_done_at: float | None = None
    paused_phase: RolloutPhase | None = None
    reason: str = ""

    @property
    def steps(self) -> tuple[int, ...]:
        return self.strategy.steps(len(self.targets))

    def count(self, *states: TargetState) -> int:
        return sum(1 for t in self.targets if t.state in states)

    def explain(self, device_id: str) -> str:
        """One line: who the device was, which gate it failed, the figure and its threshold."""
        i, t = next((i, t) for i, t in enumerate(self.targets) if t.device_id == device_id)
        who = explaining.role(i, self.steps, canary=self.strategy.kind is Kind.CANARY)
        return explaining.line(who, device_id, t.reason.removesuffix(NO_PREVIOUS).strip("; "))


@dataclass(frozen=True)
class SendDesired:
    device_id: str
    release: str
    generation: int
    rollback: bool = False


def start(
    rollout_id: str, fleet: str, release: str, strategy: Strategy, device_ids: list[str]
) -> Rollout:
    targets = tuple(Target(d) for d in sorted(device_ids))
    return Rollout(rollout_id, fleet, release, strategy, targets)


@dataclass(frozen=True)
class Refusal:
    """Why an operator's request does not apply to the rollout (or fleet) as it is: one line,
    which the API answers with (FAILED_PRECONDITION). Nothing changed."""

    message: str


RUNNING = (RolloutPhase.PENDING, RolloutPhase.CANARY, RolloutPhase.WAVE)
Decided = tuple[Rollout, list[SendDesired]]


def pause(r: Rollout) -> Rollout | Refusal:
    """Stop sending; a paused rollout is left as it is (the same rollout back)."""
    if r.phase is RolloutPhase.PAUSED:
        return r
    if r.phase not in RUNNING:
        return Refusal(f"rollout {r.id} is {r.phase}; only a running rollout can be paused")
    return replace(r, phase=RolloutPhase.PAUSED, paused_phase=r.phase)


def resume(r: Rollout) -> Rollout | Refusal:
    """Back to the phase it was paused in; a running rollout is left as it is."""
    if r.phase in RUNNING:
        return r
    if r.phase is not RolloutPhase.PAUSED or r.paused_phase is None:
        return Refusal(f"rollout {r.id} is {r.phase}; only a paused rollout can be resumed")
    return replace(r, phase=r.paused_phase, paused_phase=None)


def abort(
    r: Rollout, reports: Mapping[str, Report], *, reason: str = "aborted by the operator"
) -> Decided | Refusal:
    """The operator's abort: roll back what the rollout touched. A rollout already rolling back
    stops waiting for the devices that have not confirmed (``stop_waiting``)."""
    if r.phase.finished:
        return Refusal(f"rollout {r.id} has already {r.phase.replace('_', ' ')}")
    if r.phase is RolloutPhase.ROLLING_BACK:
        done = stop_waiting(r)
        return done if isinstance(done, Refusal) else (done, [])
    return _abort(r, reports, reason=reason)


def stop_waiting(r: Rollout) -> Rollout | Refusal:
    """A rollout rolling back, finished without the devices that did not confirm (their
    rollback stays retained)."""
    if r.phase is not RolloutPhase.ROLLING_BACK:
        return Refusal(f"rollout {r.id} is {r.phase}; it waits for no rollback")
    left = [t.device_id for t in r.targets if t.state is TargetState.ROLLING_BACK]
    targets = tuple(
        replace(t, reason=_join(t.reason, "rollback not confirmed when the wait stopped"))
        if t.state is TargetState.ROLLING_BACK
        else t
        for t in r.targets
    )
    reason = _join(r.reason, f"stopped waiting for {', '.join(left)} to confirm")
    return replace(r, targets=targets, phase=RolloutPhase.ROLLED_BACK, reason=reason)


def busy(r: Rollout) -> Refusal | None:
    """Why a new rollout of ``r``'s fleet must wait (``r`` is unfinished), or ``None``."""
    if r.phase.finished:
        return None
    what = f"{r.release} " if r.release else ""
    return Refusal(
        f"fleet {r.fleet} has an unfinished rollout {r.id} ({what}{r.phase}): wait "
        f"for it or abort it (edgectl rollout abort {r.id})"
    )


def rollback_goal(
    fleet: str, device_ids: Sequence[str], previous: Mapping[str, str], *, to_release: str = ""
) -> dict[str, str] | Refusal:
    """Where a fleet rollback sends each device: ``to_release``, or the release it ran before
    ("" = nothing to go back to); refused when no device has anywhere to go."""
    goal = {d: to_release or previous.get(d, "") for d in device_ids}
    if not any(goal.values()):
        return Refusal(
            f"no device of fleet {fleet} has a previous release to go back to; "
            "name the release to go to"
        )
    return goal


def fleet_rollback(
    rollout_id: str,
    fleet: str,
    goal: Mapping[str, str],
    reports: Mapping[str, Report],
    *,
    to_release: str = "",
) -> Decided:
    """A rollout of its own sending every device of ``goal`` to its release there (devices
    with "" are left alone and reverted at once)."""
    r = start(rollout_id, fleet, to_release, Strategy(), list(goal))
    # The abort sends every touched device to its previous release: mark each device touched,
    # with the release to go back to.
    touched = tuple(
        replace(t, state=TargetState.HEALTHY, previous_release=goal[t.device_id]) for t in r.targets
    )
    why = "fleet rollback to " + (to_release or "each device's previous release")
    return _abort(replace(r, targets=touched), reports, reason=why)


def supersede(r: Rollout, reports: Mapping[str, Report], *, by: str) -> Decided:
    """An unfinished rollout of a fleet that fleet rollback ``by`` takes over: aborted, unless it
    is rolling back already (or finished): then the same rollout, nothing to send."""
    if r.phase is RolloutPhase.ROLLING_BACK or r.phase.finished:
        return r, []
    return _abort(r, reports, reason=f"aborted by fleet rollback {by}")


def _abort(r: Rollout, reports: Mapping[str, Report], *, reason: str) -> Decided:
    """Stop sending and send every touched device back to what it ran before."""
    if r.phase in (RolloutPhase.SUCCEEDED, RolloutPhase.ROLLING_BACK, RolloutPhase.ROLLED_BACK):
        return r, []
    commands: list[SendDesired] = []
    targets = []
    for t in r.targets:
        if t.state not in TOUCHED:
            targets.append(t)
        elif not t.previous_release:
            targets.append(
                replace(t, state=TargetState.REVERTED, reason=_join(t.reason, NO_PREVIOUS))
            )
        else:
            gen = _next_generation(t, reports.get(t.device_id))
            commands.append(SendDesired(t.device_id, t.previous_release, gen, rollback=True))
            targets.append(replace(t, state=TargetState.ROLLING_BACK, generation=gen))
    phase = RolloutPhase.ROLLING_BACK if commands else RolloutPhase.ROLLED_BACK
    return replace(
        r, targets=tuple(targets), phase=phase, paused_phase=None, reason=reason
    ), commands


def step(
    r: Rollout, reports: Mapping[str, Report], *, now: float
) -> tuple[Rollout, list[SendDesired]]:
    if r.phase is RolloutPhase.ROLLING_BACK:
        return _confirm_rollback(r, reports, now=now), []
    if r.phase not in (RolloutPhase.PENDING, RolloutPhase.CANARY, RolloutPhase.WAVE):
        return r, []
    r = replace(
        r, targets=tuple(_judge(t, r, reports.get(t.device_id), now=now) for t in r.targets)
    )
    failed, sent = r.count(TargetState.FAILED), r.count(*TOUCHED)
    if r.strategy.too_many_failures(failed, sent):
        worst = next(t for t in r.targets if t.state is TargetState.FAILED)
        return _abort(
            r,
            reports,
            reason=f"{r.explain(worst.device_id)}; {failed} of {sent} devices failed "
            f"(limit {r.strategy.max_failures})",
        )
    steps = r.steps
    if not steps:
        return replace(r, phase=RolloutPhase.SUCCEEDED, reason="fleet has no devices"), []
    commands: list[SendDesired] = []
    while True:
        r, sent_now = _dispatch(r, reports, goal=steps[r.step], now=now)
        commands.extend(sent_now)
        if r.count(*TOUCHED) < steps[r.step] or r.count(TargetState.SENT):
            return replace(r, step_done_at=None), commands
        done_at = r.step_done_at if r.step_done_at is not None else now
        if now - done_at < r.strategy.bake_s:
            return replace(r, step_done_at=done_at), commands
        if r.step + 1 >= len(steps):
            return replace(r, phase=RolloutPhase.SUCCEEDED, step_done_at=done_at), commands
        r = replace(r, step=r.step + 1, step_done_at=None, phase=RolloutPhase.WAVE)


def _dispatch(
    r: Rollout, reports: Mapping[str, Report], *, goal: int, now: float
) -> tuple[Rollout, list[SendDesired]]:
    room = goal - r.count(*TOUCHED)
    if r.strategy.max_parallel:
        room = min(room, r.strategy.max_parallel - r.count(TargetState.SENT))
    if room <= 0:
        return _with_phase(r), []
    commands = []
    targets = list(r.targets)
    for i, t in enumerate(targets):
        if room == 0:
            break
        if t.state is not TargetState.WAITING:
            continue
        report = reports.get(t.device_id)
        gen = _next_generation(t, report)
        baseline = None
        previous = report.active_release if report else ""
        if report and report.metrics_release == previous:
            baseline = report.p95_ms
        targets[i] = replace(
            t,
            state=TargetState.SENT,
            generation=gen,
            sent_at=now,
            previous_release=previous,
            baseline_p95_ms=baseline,
        )
        commands.append(SendDesired(t.device_id, r.release, gen))
        room -= 1
    return _with_phase(replace(r, targets=tuple(targets))), commands


def _with_phase(r: Rollout) -> Rollout:
    canary = r.strategy.kind is Kind.CANARY and r.step == 0
    return replace(r, phase=RolloutPhase.CANARY if canary else RolloutPhase.WAVE)


def _judge(t: Target, r: Rollout, report: Report | None, *, now: float) -> Target:
    """Move one device along: sent -> healthy | failed; healthy -> failed if a gate trips."""
    if t.state not in (TargetState.SENT, TargetState.HEALTHY):
        return t
    reached = report is not None and report.generation_applied >= t.generation
    if not reached or report is None:
        if t.state is TargetState.SENT and now - t.sent_at > r.strategy.device_timeout_s:
            last = (
                "it never reported"
                if report is None
                else f"it last reported generation {report.generation_applied}, "
                f"{report.phase or 'no phase'} on {report.active_release or 'nothing'}"
            )
            return replace(
                t,
                state=TargetState.FAILED,
                reason=explaining.timed_out(r.strategy.device_timeout_s, last),
            )
        return t
    if report.active_release != r.release or report.phase in ("failed", "rolled_back"):
        why = (
            report.last_error
            or f"device reports {report.phase or 'unknown'} on {report.active_release or 'nothing'}"
        )
        return replace(t, state=TargetState.FAILED, reason=why)
    if report.phase != "active":
        return t  # still in its health window
    if gate := _gate(t, r.strategy, report, release=r.release):
        return replace(t, state=TargetState.FAILED, reason=gate)
    return replace(t, state=TargetState.HEALTHY, reason="")


def _gate(t: Target, s: Strategy, report: Report, *, release: str) -> str:
    if report.metrics_release != release:
        return ""
    if report.error_rate is not None and report.error_rate > s.max_error_rate:
        return explaining.error_rate_gate(report.error_rate, limit=s.max_error_rate)
    if report.p95_ms is not None and t.baseline_p95_ms:
        limit = t.baseline_p95_ms * s.max_latency_ratio
        if report.p95_ms > limit:
            return explaining.latency_gate(
                report.p95_ms, baseline_ms=t.baseline_p95_ms, ratio=s.max_latency_ratio
            )
    return ""


def _confirm_rollback(r: Rollout, reports: Mapping[str, Report], *, now: float) -> Rollout:
    targets = []
    for t in r.targets:
        report = reports.get(t.device_id)
        confirmed = (
            t.state is TargetState.ROLLING_BACK
            and report is not None
            and report.generation_applied >= t.generation
        )
        targets.append(replace(t, state=TargetState.REVERTED) if confirmed else t)
    r = replace(r, targets=tuple(targets))
    if not r.count(TargetState.ROLLING_BACK):
        return replace(r, phase=RolloutPhase.ROLLED_BACK)
    return r


def _next_generation(t: Target, report: Report | None) -> int:
    issued = max(t.generation, report.last_desired if report else 0)
    applied = report.generation_applied if report else 0
    return max(issued, applied) + 1


def _join(a: str, b: str) -> str:
    return f"{a}; {b}" if a else b
