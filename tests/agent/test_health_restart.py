"""Health windows and crash loops across crashes, with the agent as a real process.

A SIGKILL (a power cut) inside a health window must not leave the device on a release that
never passed; one after the window passed keeps the new release. A release the agent dies
loading ``max_load_failures`` times in a row is rolled back at the next start.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest

from edgefleet.agent.state import StateFile
from edgefleet.common import types as t
from edgefleet.demo.digits import DigitsData, TrainedModel
from tests.agent.conftest import Spawn, StartAgent
from tests.agent.helpers import (
    AgentProcess,
    ArtifactServer,
    Release,
    Signer,
    Watcher,
    active_on,
    predict,
    wait_for,
)

pytestmark = pytest.mark.slow
P = t.InstallPhase
# an agent process serving v1, its watcher, and offer(release, generation)
OnV1 = tuple[AgentProcess, Watcher, Callable[[Release, int], None]]


def apply(
    w: Watcher, signer: Signer, artifacts: ArtifactServer, release: Release, gen: int
) -> None:
    artifacts.publish(release)
    w.publish_desired(signer.desired(release, device_id=w.device_id, generation=gen))


@pytest.fixture
def on_v1(
    signer: Signer,
    artifacts: ArtifactServer,
    spawn: Spawn,
    watch: Callable[[str], Watcher],
    digits_model: TrainedModel,
) -> OnV1:
    """An agent process on a new device serving digits:1.0.0 (generation 1), its watcher, and
    ``offer(release, generation)`` to publish a release to it."""
    p = spawn()
    w = watch(p.device_id)
    p.start()
    apply(w, signer, artifacts, signer.release(digits_model.onnx_bytes, version="1.0.0"), 1)
    w.wait_status(active_on("digits:1.0.0"), what="v1 active")
    return p, w, functools.partial(apply, w, signer, artifacts)


def test_sigkill_in_the_window_comes_back_on_the_previous_release(
    signer: Signer,
    on_v1: OnV1,
    digits_model_v2: TrainedModel,
    digits_data: DigitsData,
) -> None:
    v2 = signer.release(
        digits_model_v2.onnx_bytes, version="2.0.0", health=t.HealthPolicy(health_window_s=120)
    )
    p, w, offer = on_v1
    offer(v2, 2)
    w.wait_status(
        lambda s: s.phase is P.HEALTH_CHECK and s.active_release == "digits:2.0.0",
        what="v2 in its health window",
    )
    assert StateFile(p.data_dir / "state.json").load().window is not None

    p.kill()  # a power cut in the window
    info = p.start()

    assert predict(info["predict_endpoint"], {"pixels": digits_data.x_test[:1]}).release == (
        "digits:1.0.0"
    )
    event = w.wait_event("rolled_back", generation=2)
    assert "restarted during the health window of digits:2.0.0, which never passed" in (
        event.message
    )
    status = w.wait_status(lambda s: s.phase is P.ROLLED_BACK, what="rolled back after restart")
    assert (status.active_release, status.generation_applied) == ("digits:1.0.0", 2)
    state = StateFile(p.data_dir / "state.json").load()
    assert state.window is None and state.active is not None and state.active.slot == "g1"
    assert state.previous is None
    assert sorted(d.name for d in (p.data_dir / "slots").iterdir()) == ["g1"]
    assert p.terminate() == 0
    # the retained desired state of generation 2 was not tried again
    starts = [e for e in w.events if e.kind == "install_started" and e.generation == 2]
    assert len(starts) == 1


def test_sigkill_after_the_window_passed_keeps_the_new_release(
    signer: Signer,
    on_v1: OnV1,
    digits_model_v2: TrainedModel,
    digits_data: DigitsData,
) -> None:
    policy = t.HealthPolicy(health_window_s=1.0)
    v2 = signer.release(digits_model_v2.onnx_bytes, version="2.0.0", health=policy)
    p, w, offer = on_v1
    offer(v2, 2)
    w.wait_event("health_window_passed", generation=2)

    p.kill()
    info = p.start()

    assert predict(info["predict_endpoint"], {"pixels": digits_data.x_test[:1]}).release == (
        "digits:2.0.0"
    )
    state = StateFile(p.data_dir / "state.json").load()
    assert state.active is not None and state.active.slot == "g2" and state.window is None
    w.wait_status(lambda s: s.phase is P.ACTIVE and s.generation_applied == 2, what="active")
    assert "rolled_back" not in w.kinds()


def test_dying_while_loading_k_times_rolls_back(
    start_agent: StartAgent,
    signer: Signer,
    artifacts: ArtifactServer,
    spawn: Spawn,
    watch: Callable[[str], Watcher],
    digits_model: TrainedModel,
    digits_model_v2: TrainedModel,
    digits_data: DigitsData,
) -> None:
    a = start_agent()
    w = watch(a.device_id)
    apply(w, signer, artifacts, signer.release(digits_model.onnx_bytes, version="1.0.0"), 1)
    w.wait_status(active_on("digits:1.0.0"), what="v1 active")
    policy = t.HealthPolicy(max_load_failures=2)
    v2 = signer.release(digits_model_v2.onnx_bytes, version="2.0.0", health=policy)
    apply(w, signer, artifacts, v2, 2)
    w.wait_status(active_on("digits:2.0.0"), what="v2 active")
    a.agent.stop()

    p = spawn(a.device_id)
    for attempt in (1, 2):  # the runtime kills the agent while it loads v2, twice
        p.launch(failpoints="load_active=kill")
        assert p.wait_exit() == 137, p.output()
        assert StateFile(p.data_dir / "state.json").load().load_failures == attempt

    info = p.start(failpoints="load_active=kill")
    assert predict(info["predict_endpoint"], {"pixels": digits_data.x_test[:1]}).release == (
        "digits:1.0.0"
    )
    event = w.wait_event("rolled_back", generation=0)
    assert "crash loop: digits:2.0.0 failed to load 2 times" in event.message
    status = w.wait_status(lambda s: s.phase is P.ROLLED_BACK, what="rolled back")
    assert (status.active_release, status.generation_applied) == ("digits:1.0.0", 2)
    state = StateFile(p.data_dir / "state.json").load()
    assert state.load_failures == 0 and state.active is not None and state.active.slot == "g1"
    wait_for("the agent to keep running", lambda: p.proc is not None and p.proc.poll() is None)
