"""The check before activation: golden outputs, NaN, load failures and the latency budget.

Real broker, real ArtifactService, real ONNX Runtime, an in-process agent. A release that fails
its check is never activated: the install fails and the release before keeps serving.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from edgefleet.common import digests
from edgefleet.common import types as t
from edgefleet.demo.digits import DigitsData, TrainedModel
from tests.agent import faults
from tests.agent.conftest import RunningAgent, StartAgent
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
)

ROWS = 64
TIMED_RUN_S = 0.003  # what each timed run takes by the agent's injected timer


def golden_labels(data: DigitsData) -> bytes:
    """Golden rows with their true labels: a good model agrees on nearly all of them."""
    return faults.golden_npz({"pixels": data.x_test[:ROWS]}, {"label": data.y_test[:ROWS]})


def on_v1(
    start_agent: StartAgent,
    watch: Callable[[str], Watcher],
    signer: Signer,
    artifacts: ArtifactServer,
    model: TrainedModel,
    **agent: Any,
) -> tuple[RunningAgent, Watcher]:
    a = start_agent(**agent)
    w = watch(a.device_id)
    install(w, signer, artifacts, model.onnx_bytes, version="1.0.0", generation=1)
    return a, w


def test_release_with_golden_data_is_fetched_checked_and_activated(
    start_agent: StartAgent,
    watch: Callable[[str], Watcher],
    signer: Signer,
    artifacts: ArtifactServer,
    digits_model: TrainedModel,
    digits_model_v2: TrainedModel,
    digits_data: DigitsData,
) -> None:
    a, w = on_v1(start_agent, watch, signer, artifacts, digits_model)
    golden = golden_labels(digits_data)
    release = signer.release(
        digits_model_v2.onnx_bytes,
        version="1.1.0",
        golden=golden,
        health=t.HealthPolicy(golden_min_agreement=0.9),
    )
    offer(w, signer, artifacts, release, 2)
    w.wait_status(active_on("digits:1.1.0"), what="v1.1 active")

    passed = w.wait_event("health_check_passed", generation=2)
    assert f"{ROWS} golden rows pass" in passed.message and "median latency" in passed.message
    assert release.manifest.golden_digest in [d for d, _ in artifacts.fetches]
    assert digests.of_file(a.data_dir / "slots" / "g2" / "golden.npz") == digests.of_bytes(golden)
    assert predict(a.endpoint, {"pixels": digits_data.x_test[:1]}).release == "digits:1.1.0"


def test_golden_blob_not_matching_its_digest_fails_the_install(
    start_agent: StartAgent,
    watch: Callable[[str], Watcher],
    signer: Signer,
    artifacts: ArtifactServer,
    digits_model: TrainedModel,
    digits_data: DigitsData,
) -> None:
    a, w = on_v1(start_agent, watch, signer, artifacts, digits_model)
    golden = golden_labels(digits_data)
    release = signer.release(digits_model.onnx_bytes, version="1.1.0", golden=golden)
    artifacts.put(release.model)
    tampered = bytearray(golden)
    tampered[-40] ^= 0xFF
    artifacts.put_as(release.manifest.golden_digest, bytes(tampered))
    w.publish_desired(signer.desired(release, device_id=a.device_id, generation=2))

    failed = w.wait_event("install_failed", generation=2)
    assert "IntegrityError" in failed.message and release.manifest.golden_digest in failed.message
    assert predict(a.endpoint, {"pixels": digits_data.x_test[:1]}).release == "digits:1.0.0"


def fault_release(
    fault: str, signer: Signer, model: TrainedModel, data: DigitsData
) -> tuple[Release, str]:
    """The faulty release ``fault`` as version 1.1.0, and what its failure must say."""
    golden = golden_labels(data)
    tolerant = t.HealthPolicy(golden_min_agreement=0.9)
    if fault == "wrong answers":
        bad = faults.wrong_answers(model.onnx_bytes)
        return signer.release(bad, version="1.1.0", golden=golden, health=tolerant), (
            "output 'label': top-1 agreement"
        )
    if fault == "NaN":
        bad = faults.nan_scores(model.onnx_bytes)
        return signer.release(bad, version="1.1.0", golden=golden, health=tolerant), (
            "output 'probabilities' holds NaN or infinity"
        )
    if fault == "fails to load":
        bad = faults.unloadable(model.onnx_bytes)
        return signer.release(bad, version="1.1.0", golden=golden), "ONNX Runtime cannot load"
    assert fault == "three times slower than its budget"
    bad = faults.slow()  # random weights: its golden data has inputs only, no expectations
    policy = t.HealthPolicy(latency_budget_ms=1.0)  # the agent's timer: 3 ms a run
    inputs_only = faults.golden_npz({"pixels": data.x_test[:ROWS]})
    return signer.release(bad, version="1.1.0", golden=inputs_only, health=policy), (
        "median latency 3.000 ms (p95 3.000 ms, 20 runs) is over the budget of 1 ms"
    )


@pytest.mark.parametrize(
    "fault", ["wrong answers", "NaN", "fails to load", "three times slower than its budget"]
)
def test_faulty_release_fails_its_check_and_the_old_model_keeps_serving(
    fault: str,
    start_agent: StartAgent,
    watch: Callable[[str], Watcher],
    signer: Signer,
    artifacts: ArtifactServer,
    digits_model: TrainedModel,
    digits_data: DigitsData,
) -> None:
    a, w = on_v1(start_agent, watch, signer, artifacts, digits_model, timer=Ticks(TIMED_RUN_S))
    release, says = fault_release(fault, signer, digits_model, digits_data)
    offer(w, signer, artifacts, release, 2)

    failed = w.wait_event("install_failed", generation=2)
    assert says in failed.message, failed.message
    assert "still serving: digits:1.0.0" in failed.message
    status = w.wait_status(lambda s: s.phase is t.InstallPhase.FAILED, what="failed")
    assert status.active_release == "digits:1.0.0" and status.generation_applied == 2
    assert says in status.last_error
    reply = predict(a.endpoint, {"pixels": digits_data.x_test[:4]})
    assert reply.release == "digits:1.0.0"
    labels = np.frombuffer({o.name: o for o in reply.outputs}["label"].data, np.int64)
    assert labels.shape == (4,)
    assert sorted(p.name for p in (a.data_dir / "slots").iterdir()) == ["g1"]
    assert "activated" not in [e.kind for e in w.events if e.generation == 2]
