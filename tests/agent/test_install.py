"""Install flows against a real broker, a real ArtifactService and real ONNX Runtime.

Each test acts as the controller: it signs a release, seals a desired state for one device and
publishes it retained with QoS 1; the agent under test runs in this process.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from edgefleet.agent.state import StateFile
from edgefleet.common import digests, signing
from edgefleet.common import types as t
from edgefleet.demo.digits import DigitsData, TrainedModel
from tests.agent import faults
from tests.agent.conftest import StartAgent
from tests.agent.helpers import (
    ArtifactServer,
    Signer,
    Watcher,
    active_on,
    install,
    model_info,
    predict,
    wait_for,
)


def test_install_then_upgrade_keeps_the_previous_slot(
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
    hello = w.wait_status(lambda s: s.phase is t.InstallPhase.IDLE, what="hello")
    assert (hello.fleet, dict(hello.labels), hello.predict_endpoint) == (
        "lab",
        {"site": "test"},
        a.endpoint,
    )
    wait_for("presence online", lambda: [p for p in w.presences if p.online])

    install(w, signer, artifacts, digits_model.onnx_bytes, version="1.0.0", generation=1)
    reply = predict(a.endpoint, {"pixels": digits_data.x_test[:8]})
    assert reply.release == "digits:1.0.0" and reply.device_id == a.device_id
    labels = {o.name: o for o in reply.outputs}["label"]
    assert np.frombuffer(labels.data, np.int64).shape == (8,)

    install(w, signer, artifacts, digits_model_v2.onnx_bytes, version="1.1.0", generation=2)
    assert predict(a.endpoint, {"pixels": digits_data.x_test[:1]}).release == "digits:1.1.0"
    status = w.statuses[-1]
    assert (status.previous_release, status.generation_applied) == ("digits:1.0.0", 2)
    w.wait_event("activated", generation=2)  # events have their own topic: after the status
    kinds = w.kinds()
    for kind in ("install_started", "fetched", "verified", "staged", "health_check_passed"):
        assert kind in kinds
    assert kinds.count("activated") == 2

    state = StateFile(a.data_dir / "state.json").load()
    assert state.active is not None and state.previous is not None
    assert sorted(p.name for p in (a.data_dir / "slots").iterdir()) == ["g1", "g2"]
    assert digests.of_file(a.data_dir / "slots" / "g1" / "model.onnx") == digests.of_bytes(
        digits_model.onnx_bytes
    )
    info = model_info(a.endpoint)
    assert info.release == "digits:1.1.0" and info.manifest_digest == state.active.manifest_digest
    agent_json = json.loads((a.data_dir / "agent.json").read_text())
    assert agent_json["predict_endpoint"] == a.endpoint and agent_json["device_id"] == a.device_id

    # a third release drops the oldest slot
    install(w, signer, artifacts, digits_model.onnx_bytes, version="1.2.0", generation=3)
    assert sorted(p.name for p in (a.data_dir / "slots").iterdir()) == ["g2", "g3"]


def test_blob_not_matching_its_digest_is_never_installed(
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

    good = digits_model_v2.onnx_bytes
    tampered = bytearray(good)
    tampered[-10] ^= 0xFF  # same size, different bytes
    release = signer.release(good, version="2.0.0")
    artifacts.put_as(release.manifest.model_digest, bytes(tampered))
    w.publish_desired(signer.desired(release, device_id=a.device_id, generation=2))

    failed = w.wait_event("install_failed", generation=2)
    assert "IntegrityError" in failed.message and "digest mismatch" in failed.message
    status = w.wait_status(lambda s: s.phase is t.InstallPhase.FAILED, what="failed")
    assert status.active_release == "digits:1.0.0" and status.generation_applied == 2
    assert predict(a.endpoint, {"pixels": digits_data.x_test[:1]}).release == "digits:1.0.0"
    assert not list((a.data_dir / "partial").iterdir())
    assert sorted(p.name for p in (a.data_dir / "slots").iterdir()) == ["g1"]


def test_desired_state_with_a_bad_signature_or_an_unknown_key(
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
    artifacts.put(digits_model_v2.onnx_bytes)
    release = signer.release(digits_model_v2.onnx_bytes, version="2.0.0")

    # signed by a key the device does not trust
    w.publish_desired(
        signer.desired(release, device_id=a.device_id, generation=2, key=signing.generate())
    )
    unknown = w.wait_event("desired_rejected")
    assert "SignatureError" in unknown.message and "unknown key" in unknown.message

    # signed by the trusted key's id, but the bytes were changed after signing
    sealed = bytearray(signer.desired(release, device_id=a.device_id, generation=3))
    at = sealed.find(b"digits:2.0.0")
    sealed[at : at + 12] = b"digits:6.6.6"
    w.publish_desired(bytes(sealed))
    wait_for("a second rejection", lambda: w.kinds().count("desired_rejected") >= 2)
    bad = [e for e in w.events if e.kind == "desired_rejected"][-1]
    assert "bad signature" in bad.message

    # addressed to another device
    w.publish_desired(signer.desired(release, device_id="someone-else", generation=4))
    wait_for("a third rejection", lambda: w.kinds().count("desired_rejected") >= 3)
    assert "addressed to" in [e for e in w.events if e.kind == "desired_rejected"][-1].message

    assert predict(a.endpoint, {"pixels": digits_data.x_test[:1]}).release == "digits:1.0.0"
    assert StateFile(a.data_dir / "state.json").load().generation_applied == 1
    assert "install_started" not in [e.kind for e in w.events if e.generation > 1]


def test_stale_generation_is_rejected_as_a_replay(
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
    old = signer.release(digits_model.onnx_bytes, version="1.0.0")
    old_desired = signer.desired(old, device_id=a.device_id, generation=1)
    artifacts.put(digits_model.onnx_bytes)
    w.publish_desired(old_desired)
    w.wait_status(active_on("digits:1.0.0"), what="v1 active")
    install(w, signer, artifacts, digits_model_v2.onnx_bytes, version="1.1.0", generation=2)

    w.publish_desired(old_desired)  # a replay of a genuine, older desired state
    rejected = w.wait_event("desired_rejected", generation=1)
    assert "stale" in rejected.message
    assert predict(a.endpoint, {"pixels": digits_data.x_test[:1]}).release == "digits:1.1.0"
    # the redelivery of the applied generation is silently ignored
    before = len(w.events)
    w.publish_desired(signer.desired(old, device_id=a.device_id, generation=2))
    w.publish_desired(old_desired)
    wait_for("the second replay's rejection", lambda: w.kinds().count("desired_rejected") >= 2)
    assert [e.kind for e in w.events[before:]] == ["desired_rejected"]


def test_malformed_payload_is_rejected(
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
    w.publish_desired(b"\xff\x00 definitely not protobuf \x13\x37")
    rejected = w.wait_event("desired_rejected")
    assert "MalformedMessageError" in rejected.message
    assert predict(a.endpoint, {"pixels": digits_data.x_test[:1]}).release == "digits:1.0.0"
    assert w.statuses[-1].phase is t.InstallPhase.ACTIVE


def test_failing_health_check_keeps_the_old_model(
    start_agent: StartAgent,
    watch: Callable[[str], Watcher],
    signer: Signer,
    artifacts: ArtifactServer,
    digits_model: TrainedModel,
    digits_data: DigitsData,
) -> None:
    bad = faults.nan_scores(digits_model.onnx_bytes)
    onnx.checker.check_model(bad)
    a = start_agent()
    w = watch(a.device_id)
    install(w, signer, artifacts, digits_model.onnx_bytes, version="1.0.0", generation=1)
    artifacts.put(bad)
    w.publish_desired(
        signer.desired(signer.release(bad, version="1.1.0"), device_id=a.device_id, generation=2)
    )
    failed = w.wait_event("install_failed", generation=2)
    assert "NaN or infinity" in failed.message
    assert predict(a.endpoint, {"pixels": digits_data.x_test[:1]}).release == "digits:1.0.0"
    assert sorted(p.name for p in (a.data_dir / "slots").iterdir()) == ["g1"]

    # a manifest whose signature does not match the model fails the same way
    wrong = signer.release(
        digits_model.onnx_bytes,
        version="1.2.0",
        inputs=(t.TensorSpec("pixels", "float32", (-1, 32)),),
    )
    w.publish_desired(signer.desired(wrong, device_id=a.device_id, generation=3))
    failed = w.wait_event("install_failed", generation=3)
    assert "manifest says pixels: float32[?,32]" in failed.message


def test_unreachable_source_retries_then_installs(
    start_agent: StartAgent,
    watch: Callable[[str], Watcher],
    signer: Signer,
    artifacts: ArtifactServer,
    digits_model: TrainedModel,
    tmp_path: Path,
) -> None:
    from tests.conftest import free_port

    a = start_agent(controller=f"127.0.0.1:{free_port()}")  # nothing listens there
    w = watch(a.device_id)
    release = signer.release(digits_model.onnx_bytes)
    artifacts.put(digits_model.onnx_bytes)
    w.publish_desired(signer.desired(release, device_id=a.device_id, generation=1))
    retry = w.wait_event("install_retry")
    assert "cannot reach" in retry.message or "UNAVAILABLE" in retry.message
    # status and events are separate topics: wait for the status, never assume it came first
    wait_for(
        "a fetching status with the error",
        lambda: [s for s in w.statuses if s.phase is t.InstallPhase.FETCHING and s.last_error],
    )
    # the controller publishes the same release with a working source: a newer generation
    w.publish_desired(
        signer.desired(release, device_id=a.device_id, generation=2, sources=[artifacts.address])
    )
    w.wait_status(active_on(release.ref), what="active after the retry")
