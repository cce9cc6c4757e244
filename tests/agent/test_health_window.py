"""The health window after activation: passing it, and rolling back by itself when it fails.

Real broker, real ArtifactService, real ONNX Runtime, an in-process agent; the faults are made
deterministic by construction: the agent's injected timer (``Ticks``) says how long each timed
call takes, whatever the machine's speed or load, and a model that ONNX Runtime fails on for
any batch but one.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc
import numpy as np
import pytest

from edgefleet.agent.state import StateFile
from edgefleet.common import types as t
from edgefleet.demo.digits import DigitsData, TrainedModel
from tests.agent import faults
from tests.agent.conftest import StartAgent
from tests.agent.helpers import (
    ArtifactServer,
    Release,
    Signer,
    Ticks,
    Watcher,
    active_on,
    install,
    offer,
    predict,
    wait_for,
)

P = t.InstallPhase


def watched_on(release: str) -> Callable[[t.DeviceStatus], bool]:
    return lambda s: s.phase is P.HEALTH_CHECK and s.active_release == release


def test_window_passes_then_the_release_is_active(
    start_agent: StartAgent,
    watch: Callable[[str], Watcher],
    signer: Signer,
    artifacts: ArtifactServer,
    digits_model: TrainedModel,
    digits_model_v2: TrainedModel,
    digits_data: DigitsData,
) -> None:
    a = start_agent()
    w = watch(a.device_id)
    install(w, signer, artifacts, digits_model.onnx_bytes, version="1.0.0", generation=1)
    golden = faults.golden_npz(
        {"pixels": digits_data.x_test[:32]}, {"label": digits_data.y_test[:32]}
    )
    policy = t.HealthPolicy(health_window_s=3.0, golden_min_agreement=0.9)
    v2 = signer.release(digits_model_v2.onnx_bytes, version="1.1.0", golden=golden, health=policy)
    offer(w, signer, artifacts, v2, 2)

    watched = w.wait_status(watched_on("digits:1.1.0"), what="v1.1 in its health window")
    assert watched.generation_applied == 2 and watched.previous_release == "digits:1.0.0"
    window = StateFile(a.data_dir / "state.json").load().window
    assert window is not None and (window.slot, window.previous_slot) == ("g2", "g1")
    assert window.duration_s == 3.0
    assert predict(a.endpoint, {"pixels": digits_data.x_test[:2]}).release == "digits:1.1.0"

    passed = w.wait_event("health_window_passed", generation=2)
    assert "healthy for its 3s health window" in passed.message
    w.wait_status(active_on("digits:1.1.0"), what="v1.1 active after its window")
    state = StateFile(a.data_dir / "state.json").load()
    assert state.window is None and state.phase is P.ACTIVE
    activated = w.wait_event("activated", generation=2)
    assert activated.phase is P.HEALTH_CHECK and "watching it for 3s" in activated.message
    assert "rolled_back" not in w.kinds()


def test_live_p95_over_the_budget_rolls_back_by_itself(
    start_agent: StartAgent,
    watch: Callable[[str], Watcher],
    signer: Signer,
    artifacts: ArtifactServer,
    digits_model: TrainedModel,
    digits_model_v2: TrainedModel,
    digits_data: DigitsData,
) -> None:
    timer = Ticks(0.0002)  # by the agent's timer every timed call takes 0.2 ms...
    a = start_agent(timer=timer)
    w = watch(a.device_id)
    install(w, signer, artifacts, digits_model.onnx_bytes, version="1.0.0", generation=1)
    policy = t.HealthPolicy(latency_budget_ms=1.0, health_window_s=30.0)
    v2 = signer.release(digits_model_v2.onnx_bytes, version="1.1.0", health=policy)
    offer(w, signer, artifacts, v2, 2)
    w.wait_status(watched_on("digits:1.1.0"), what="v1.1 in its health window")
    assert "install_failed" not in w.kinds()  # its pre-activation runs are within the budget

    timer.step = 0.05  # ...until live traffic comes: 50 ms a Predict, far over the budget
    rows = digits_data.x_test[:8]
    wait_for(  # live traffic until the window judges it (it needs MIN_LIVE_SAMPLES at once)
        "the window to roll v1.1 back",
        lambda: predict(a.endpoint, {"pixels": rows}).release != "digits:1.1.0",
        every=0.0,
    )

    event = w.wait_event("rolled_back", generation=2)
    assert "live p95 latency" in event.message and "over the budget of 1 ms" in event.message
    assert event.release == "digits:1.0.0" and event.phase is P.ROLLED_BACK
    status = w.wait_status(lambda s: s.phase is P.ROLLED_BACK, what="rolled back")
    assert (status.active_release, status.generation_applied) == ("digits:1.0.0", 2)
    assert "digits:1.1.0 failed its health window, back on digits:1.0.0" in status.last_error
    assert predict(a.endpoint, {"pixels": digits_data.x_test[:1]}).release == "digits:1.0.0"
    state = StateFile(a.data_dir / "state.json").load()
    assert state.window is None and state.active is not None and state.active.slot == "g1"
    assert sorted(p.name for p in (a.data_dir / "slots").iterdir()) == ["g1"]


def batch_of_one_release(signer: Signer, model: TrainedModel, version: str) -> Release:
    policy = t.HealthPolicy(health_window_s=30.0, max_load_failures=3)
    return signer.release(faults.batch_of_one(model.onnx_bytes), version=version, health=policy)


def fail_predicts(endpoint: str, rows: np.ndarray, times: int) -> None:
    for _ in range(times):
        with pytest.raises(grpc.RpcError) as err:
            predict(endpoint, {"pixels": rows})
        assert err.value.code() is grpc.StatusCode.INTERNAL, err.value.details()


def test_runtime_failures_in_the_window_are_a_crash_loop(
    start_agent: StartAgent,
    watch: Callable[[str], Watcher],
    signer: Signer,
    artifacts: ArtifactServer,
    digits_model: TrainedModel,
    digits_data: DigitsData,
) -> None:
    a = start_agent()
    w = watch(a.device_id)
    install(w, signer, artifacts, digits_model.onnx_bytes, version="1.0.0", generation=1)
    offer(w, signer, artifacts, batch_of_one_release(signer, digits_model, "1.1.0"), 2)
    w.wait_status(watched_on("digits:1.1.0"), what="v1.1 in its health window")
    assert predict(a.endpoint, {"pixels": digits_data.x_test[:1]}).release == "digits:1.1.0"

    fail_predicts(a.endpoint, digits_data.x_test[:2], 3)

    event = w.wait_event("rolled_back", generation=2)
    assert "crash loop: the runtime failed 3 times" in event.message
    assert "Reshape" in event.message
    status = w.wait_status(lambda s: s.phase is P.ROLLED_BACK, what="rolled back")
    assert status.active_release == "digits:1.0.0"
    assert predict(a.endpoint, {"pixels": digits_data.x_test[:2]}).release == "digits:1.0.0"


def test_first_release_failing_its_window_leaves_no_model_serving(
    start_agent: StartAgent,
    watch: Callable[[str], Watcher],
    signer: Signer,
    artifacts: ArtifactServer,
    digits_model: TrainedModel,
    digits_data: DigitsData,
) -> None:
    a = start_agent()
    w = watch(a.device_id)
    offer(w, signer, artifacts, batch_of_one_release(signer, digits_model, "1.0.0"), 1)
    w.wait_status(watched_on("digits:1.0.0"), what="v1 in its health window")
    fail_predicts(a.endpoint, digits_data.x_test[:3], 3)

    event = w.wait_event("rolled_back", generation=1)
    assert "back on no model" in event.message and event.release == ""
    status = w.wait_status(lambda s: s.phase is P.ROLLED_BACK, what="rolled back")
    assert status.active_release == "" and status.generation_applied == 1
    with pytest.raises(grpc.RpcError) as err:
        predict(a.endpoint, {"pixels": digits_data.x_test[:1]})
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    assert not list((a.data_dir / "slots").iterdir())


def test_newer_release_during_a_window_keeps_the_last_proven_one_as_previous(
    start_agent: StartAgent,
    watch: Callable[[str], Watcher],
    signer: Signer,
    artifacts: ArtifactServer,
    digits_model: TrainedModel,
    digits_model_v2: TrainedModel,
    digits_data: DigitsData,
) -> None:
    a = start_agent()
    w = watch(a.device_id)
    install(w, signer, artifacts, digits_model.onnx_bytes, version="1.0.0", generation=1)
    watched = t.HealthPolicy(health_window_s=60.0)
    v2 = signer.release(digits_model_v2.onnx_bytes, version="2.0.0", health=watched)
    offer(w, signer, artifacts, v2, 2)
    w.wait_status(watched_on("digits:2.0.0"), what="v2 in its health window")

    v3 = signer.release(
        faults.batch_of_one(digits_model.onnx_bytes), version="3.0.0", health=watched
    )
    offer(w, signer, artifacts, v3, 3)
    status = w.wait_status(watched_on("digits:3.0.0"), what="v3 in its health window")
    assert status.previous_release == "digits:1.0.0"  # v2 never passed its window
    fail_predicts(a.endpoint, digits_data.x_test[:2], 3)
    w.wait_event("rolled_back", generation=3)
    status = w.wait_status(lambda s: s.phase is P.ROLLED_BACK, what="rolled back")
    assert status.active_release == "digits:1.0.0"
    wait_for("v1 serving", lambda: predict(a.endpoint, {"pixels": digits_data.x_test[:2]}))
    assert sorted(p.name for p in (a.data_dir / "slots").iterdir()) == ["g1"]
