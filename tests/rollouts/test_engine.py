"""The rollout engine, driven by tables of fleet reports and a clock: no sockets, no mocks."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from edgefleet.controller.rollouts import engine, strategy
from edgefleet.controller.rollouts.engine import Report, RolloutPhase, SendDesired, TargetState

OLD, NEW = "digits:1.0.0", "digits:1.1.0"
DEVICES = ["d1", "d2", "d3", "d4"]


def fleet_on_old(devices: Iterable[str] = DEVICES, *, p95: float = 2.0) -> dict[str, Report]:
    return {
        d: Report(
            d, OLD, "active", generation_applied=1, last_desired=1, metrics_release=OLD, p95_ms=p95
        )
        for d in devices
    }


def applied(
    reports: dict[str, Report],
    commands: list[SendDesired],
    *,
    phase: str = "active",
    p95: float | None = 2.0,
    error: str = "",
) -> dict[str, Report]:
    """The devices carry out the commands: each reports the commanded release in ``phase``."""
    out = dict(reports)
    for c in commands:
        active = (
            c.release
            if phase in ("active", "health_check")
            else reports[c.device_id].active_release
        )
        out[c.device_id] = Report(
            c.device_id,
            active,
            phase,
            generation_applied=c.generation,
            last_desired=c.generation,
            last_error=error,
            metrics_release=active,
            p95_ms=p95,
        )
    return out


def new(kind: str = "canary", **kw: object) -> engine.Rollout:
    s = strategy.parse(kind=kind, **kw)  # type: ignore[arg-type]
    return engine.start("r1", "factory-a", NEW, s, DEVICES)


def states(r: engine.Rollout) -> dict[str, str]:
    return {t.device_id: t.state.value for t in r.targets}


def test_canary_then_waves_to_success() -> None:
    reports = fleet_on_old()
    r, cmds = engine.step(new(canary="1", waves="50%"), reports, now=0)
    assert r.phase is RolloutPhase.CANARY
    assert cmds == [SendDesired("d1", NEW, 2)]
    r, more = engine.step(r, reports, now=1)
    assert more == [], "nothing new until the canary reports"
    reports = applied(reports, cmds)
    r, cmds = engine.step(r, reports, now=2)
    assert r.phase is RolloutPhase.WAVE and [c.device_id for c in cmds] == ["d2"]
    reports = applied(reports, cmds)
    r, cmds = engine.step(r, reports, now=3)
    assert [c.device_id for c in cmds] == ["d3", "d4"]
    reports = applied(reports, cmds)
    r, cmds = engine.step(r, reports, now=4)
    assert r.phase is RolloutPhase.SUCCEEDED and cmds == []
    assert set(states(r).values()) == {"healthy"}


@pytest.mark.parametrize(
    ("phase", "p95", "error", "reason"),
    [
        ("failed", 2.0, "model failed to load: bad opset", "failed to load"),
        ("rolled_back", 2.0, "golden output mismatch", "golden output"),
        ("active", 9.0, "", "canary d1 failed the latency gate: p95 9.00 ms > 1.5x baseline"),
    ],
    ids=["load-failure", "device-rolled-back", "latency-gate"],
)
def test_bad_release_stops_at_the_canary(phase: str, p95: float, error: str, reason: str) -> None:
    reports = fleet_on_old()
    r, cmds = engine.step(new(canary="1", waves="50%"), reports, now=0)
    reports = applied(reports, cmds, phase=phase, p95=p95, error=error)
    r, back = engine.step(r, reports, now=1)
    assert r.phase is RolloutPhase.ROLLING_BACK
    assert reason in r.reason
    assert back == [SendDesired("d1", OLD, 3, rollback=True)], "only the canary goes back"
    assert states(r) == {"d1": "rolling_back", "d2": "waiting", "d3": "waiting", "d4": "waiting"}
    reports = applied(reports, back)
    r, cmds = engine.step(r, reports, now=2)
    assert r.phase is RolloutPhase.ROLLED_BACK and cmds == []
    assert states(r)["d1"] == "reverted"


def test_silent_device_times_out_as_failed() -> None:
    reports = fleet_on_old()
    r, cmds = engine.step(
        new(canary="1", device_timeout="10s", max_failures="100%"), reports, now=0
    )
    r, _ = engine.step(r, reports, now=9)
    assert states(r)["d1"] == "sent"
    r, cmds = engine.step(r, reports, now=11)
    assert states(r)["d1"] == "failed" and "no report within 10s" in r.targets[0].reason
    assert r.phase is RolloutPhase.WAVE, "within the failure budget the rollout goes on"
    assert {c.device_id for c in cmds} == {"d2", "d3", "d4"}


def test_bake_time_holds_the_next_step() -> None:
    reports = fleet_on_old()
    r, cmds = engine.step(new(canary="1", bake="30s"), reports, now=0)
    reports = applied(reports, cmds)
    r, cmds = engine.step(r, reports, now=5)
    assert cmds == [] and r.step_done_at == 5
    r, cmds = engine.step(r, reports, now=34)
    assert cmds == []
    r, cmds = engine.step(r, reports, now=35)
    assert len(cmds) == 3


def test_health_window_is_not_yet_healthy() -> None:
    reports = fleet_on_old()
    r, cmds = engine.step(new(canary="1"), reports, now=0)
    r, more = engine.step(r, applied(reports, cmds, phase="health_check"), now=1)
    assert states(r)["d1"] == "sent" and more == []


def test_max_parallel_limits_devices_in_flight() -> None:
    reports = fleet_on_old()
    r, cmds = engine.step(new("all-at-once", max_parallel=2), reports, now=0)
    assert [c.device_id for c in cmds] == ["d1", "d2"]
    reports = applied(reports, cmds[:1])
    r, cmds = engine.step(r, reports, now=1)
    assert [c.device_id for c in cmds] == ["d3"]


def test_healthy_device_that_later_rolls_back_fails_the_rollout() -> None:
    reports = fleet_on_old()
    r, cmds = engine.step(new(canary="1", bake="60s"), reports, now=0)
    reports = applied(reports, cmds)
    r, _ = engine.step(r, reports, now=1)
    assert states(r)["d1"] == "healthy"
    reports["d1"] = Report(
        "d1",
        OLD,
        "rolled_back",
        generation_applied=2,
        last_desired=2,
        last_error="crash loop: 3 runtime failures",
    )
    r, back = engine.step(r, reports, now=2)
    assert r.phase is RolloutPhase.ROLLING_BACK and "crash loop" in r.reason
    assert back[0].generation == 3


def test_pause_and_resume() -> None:
    reports = fleet_on_old()
    r, cmds = engine.step(new(canary="1"), reports, now=0)
    paused = engine.pause(r)
    assert isinstance(paused, engine.Rollout)
    reports = applied(reports, cmds)
    r, more = engine.step(paused, reports, now=1)
    assert r.phase is RolloutPhase.PAUSED and more == []
    resumed = engine.resume(r)
    assert isinstance(resumed, engine.Rollout) and resumed.phase is RolloutPhase.CANARY
    r = resumed
    r, more = engine.step(r, reports, now=2)
    assert len(more) == 3


def test_operator_abort_sends_back_only_touched_devices() -> None:
    reports = fleet_on_old()
    r, cmds = engine.step(new(canary="2"), reports, now=0)
    assert len(cmds) == 2
    aborted = engine.abort(r, reports, reason="operator abort")
    assert not isinstance(aborted, engine.Refusal)
    r, back = aborted
    assert r.phase is RolloutPhase.ROLLING_BACK
    assert {c.device_id for c in back} == {"d1", "d2"}
    assert all(c.rollback and c.release == OLD for c in back)


def test_generations_stay_above_what_the_device_applied() -> None:
    reports = fleet_on_old()
    reports["d1"] = Report("d1", OLD, "active", generation_applied=40, last_desired=7)
    _, cmds = engine.step(new(canary="1"), reports, now=0)
    assert cmds == [SendDesired("d1", NEW, 41)]


def test_device_with_nothing_to_return_to_is_left_alone() -> None:
    reports = {d: Report(d) for d in DEVICES}  # fresh devices, no release yet
    r, cmds = engine.step(new(canary="1"), reports, now=0)
    reports = applied(reports, cmds, phase="failed", error="bad model")
    r, back = engine.step(r, reports, now=1)
    assert back == [] and r.phase is RolloutPhase.ROLLED_BACK
    assert "no previous release" in r.targets[0].reason


def test_empty_fleet_succeeds_at_once() -> None:
    r = engine.start("r1", "f", NEW, strategy.parse(), [])
    r, cmds = engine.step(r, {}, now=0)
    assert r.phase is RolloutPhase.SUCCEEDED and cmds == []


def test_error_rate_gate() -> None:
    reports = fleet_on_old()
    r, cmds = engine.step(new(canary="1", max_error_rate=0.01), reports, now=0)
    reports = applied(reports, cmds)
    reports["d1"] = Report(
        "d1", NEW, "active", 2, 2, metrics_release=NEW, p95_ms=2.0, error_rate=0.2
    )
    r, _ = engine.step(r, reports, now=1)
    assert r.phase is RolloutPhase.ROLLING_BACK and "error rate 20.0%" in r.reason
    assert TargetState.ROLLING_BACK in {t.state for t in r.targets}


def test_the_latency_gate_compares_each_device_with_its_own_previous_figures() -> None:
    """Devices running different model variants (a GPU's fp16 at 1 ms, a Pi's int8 at 20 ms)
    are each judged against their own p95 before the rollout, not against the fleet's."""
    gpu, pi = "gpu", "pi"
    reports = fleet_on_old([gpu], p95=1.0) | fleet_on_old([pi], p95=20.0)

    def judged(gpu_p95: float, pi_p95: float) -> engine.Rollout:
        s = strategy.parse(kind="all-at-once")
        r, cmds = engine.step(engine.start("r1", "factory-a", NEW, s, [gpu, pi]), reports, now=0)
        assert {c.device_id for c in cmds} == {gpu, pi}
        after = applied(reports, [c for c in cmds if c.device_id == pi], p95=pi_p95)
        after = applied(after, [c for c in cmds if c.device_id == gpu], p95=gpu_p95)
        return engine.step(r, after, now=1)[0]

    # the Pi's 25 ms is 25x the GPU's baseline, but 1.25x its own: both pass
    ok = judged(gpu_p95=1.4, pi_p95=25.0)
    assert states(ok) == {gpu: "healthy", pi: "healthy"}
    assert ok.phase is RolloutPhase.SUCCEEDED
    # 3 ms is far under the Pi's figures, but 3x the GPU's own
    slow = judged(gpu_p95=3.0, pi_p95=20.0)
    [failed] = [t for t in slow.targets if t.device_id == gpu]
    assert failed.state is TargetState.ROLLING_BACK  # failed, and the rollout rolls back
    assert "p95 3.00 ms > 1.5x baseline 1.00 ms" in failed.reason
    assert slow.phase is not RolloutPhase.SUCCEEDED
