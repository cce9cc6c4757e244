"""The agent as a real process: broker down at start, SIGKILL mid-download and mid-activation,
graceful SIGTERM. After any crash the device is on a verified model, never a partial one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edgefleet.agent.state import StateFile
from edgefleet.common import digests
from edgefleet.common import types as t
from edgefleet.demo.digits import DigitsData, TrainedModel
from tests.agent.conftest import Spawn, StartAgent
from tests.agent.helpers import (
    ArtifactServer,
    Signer,
    Watcher,
    install,
    model_info,
    predict,
    wait_for,
)
from tests.conftest import Broker

pytestmark = pytest.mark.slow


def install_v1_in_process(
    start_agent: StartAgent,
    watcher: Callable[[str], Watcher],
    signer: Signer,
    artifacts: ArtifactServer,
    model: TrainedModel,
    *,
    mqtt: str,
) -> tuple[str, Path]:
    """A device with v1 active (installed by an in-process agent, then stopped)."""
    a = start_agent(mqtt=mqtt)
    w = watcher(a.device_id)
    artifacts.put(model.onnx_bytes)
    release = signer.release(model.onnx_bytes, version="1.0.0")
    w.publish_desired(signer.desired(release, device_id=a.device_id, generation=1))
    w.wait_status(lambda s: s.active_release == "digits:1.0.0", what="v1 active")
    a.agent.stop()
    return a.device_id, a.data_dir


def test_broker_down_at_start_keeps_serving_then_connects(
    own_broker: Broker,
    start_agent: StartAgent,
    signer: Signer,
    artifacts: ArtifactServer,
    spawn: Spawn,
    digits_model: TrainedModel,
    digits_data: DigitsData,
) -> None:
    watchers: list[Watcher] = []

    def watcher(device: str) -> Watcher:
        watchers.append(Watcher(own_broker.url, device_id=device))
        return watchers[-1]

    try:
        device_id, _ = install_v1_in_process(
            start_agent, watcher, signer, artifacts, digits_model, mqtt=own_broker.url
        )
    finally:
        for made in watchers:
            made.close()
    own_broker.stop()

    p = spawn(broker=own_broker, device_id=device_id)
    info = p.start()
    wait_for("the ready line", lambda: f"predict={info['predict_endpoint']}" in p.output())
    reply = predict(info["predict_endpoint"], {"pixels": digits_data.x_test[:2]})
    assert reply.release == "digits:1.0.0"

    own_broker.start()
    w = Watcher(own_broker.url, device_id=device_id)
    try:
        presence = wait_for(
            "presence online after the broker came back",
            lambda: [x for x in w.presences if x.online],
            timeout=45,
        )[-1]
        assert presence.predict_endpoint == info["predict_endpoint"]
        assert presence.active_release == "digits:1.0.0"
        w.wait_status(lambda s: s.phase is t.InstallPhase.ACTIVE, what="status after reconnect")
        assert p.terminate() == 0  # SIGTERM: graceful
        wait_for("presence offline", lambda: w.presences and not w.presences[-1].online)
    finally:
        w.close()


def test_sigkill_mid_download_resumes_from_the_offset(
    broker: Broker,
    signer: Signer,
    artifacts: ArtifactServer,
    spawn: Spawn,
    watch: Callable[[str], Watcher],
    digits_model: TrainedModel,
    digits_data: DigitsData,
) -> None:
    model = digits_model.onnx_bytes
    release = signer.release(model)
    digest = artifacts.put(model)
    artifacts.servicer.chunk_size, artifacts.servicer.delay_s = 1024, 0.15  # ~1.5 s download

    p = spawn(broker=broker)
    w = watch(p.device_id)
    p.start()
    w.publish_desired(signer.desired(release, device_id=p.device_id, generation=1))
    partial = p.data_dir / "partial" / f"{digests.hex_part(digest)}.part"
    wait_for("some bytes on disk", lambda: partial.exists() and partial.stat().st_size > 0)
    p.kill()
    cut_at = partial.stat().st_size
    assert 0 < cut_at < len(model)

    artifacts.servicer.delay_s = 0.0
    info = p.start()
    w.wait_status(lambda s: s.active_release == release.ref, what="active after resuming")
    resumed = [offset for d, offset in artifacts.fetches if d == digest and offset > 0]
    assert resumed and resumed[0] >= cut_at
    w.wait_event("fetch_resumed")  # events have their own topic: they may follow the status
    assert model_info(info["predict_endpoint"]).manifest_digest == release.manifest_digest
    state = StateFile(p.data_dir / "state.json").load()
    assert state.active is not None and state.active.model_digest == digest
    assert digests.of_file(p.data_dir / "slots" / state.active.slot / "model.onnx") == digest
    out = predict(info["predict_endpoint"], {"pixels": digits_data.x_test[:3]}).outputs
    assert np.frombuffer({o.name: o for o in out}["label"].data, np.int64).shape == (3,)


@pytest.mark.parametrize("point", ["before_activate", "after_activate_state"])
def test_sigkill_mid_activation_lands_on_a_verified_model(
    point: str,
    broker: Broker,
    start_agent: StartAgent,
    signer: Signer,
    artifacts: ArtifactServer,
    spawn: Spawn,
    watch: Callable[[str], Watcher],
    digits_model: TrainedModel,
    digits_model_v2: TrainedModel,
    digits_data: DigitsData,
) -> None:
    device_id, data_dir = install_v1_in_process(
        start_agent, watch, signer, artifacts, digits_model, mqtt=broker.url
    )
    v2 = signer.release(digits_model_v2.onnx_bytes, version="2.0.0")
    artifacts.put(digits_model_v2.onnx_bytes)
    w = watch(device_id)

    p = spawn(broker=broker, device_id=device_id)
    p.start(failpoints=f"{point}=kill")
    w.publish_desired(signer.desired(v2, device_id=device_id, generation=2))
    assert p.wait_exit() == 137, p.output()
    assert f"failpoint {point}" in p.output()

    info = p.start()
    endpoint = info["predict_endpoint"]
    release = predict(endpoint, {"pixels": digits_data.x_test[:1]}).release
    assert release in ("digits:1.0.0", "digits:2.0.0")
    w.wait_status(lambda s: s.active_release == "digits:2.0.0", what="v2 active after restart")
    state = StateFile(data_dir / "state.json").load()
    assert state.active is not None and state.install is None
    assert state.active.model_digest == v2.manifest.model_digest
    assert state.previous is not None and state.previous.release == "digits:1.0.0"
    assert digests.of_file(data_dir / "slots" / state.active.slot / "model.onnx") == (
        v2.manifest.model_digest
    )
    assert predict(endpoint, {"pixels": digits_data.x_test[:1]}).release == "digits:2.0.0"


def test_tampered_active_model_falls_back_to_the_previous_slot(
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
    install(w, signer, artifacts, digits_model_v2.onnx_bytes, version="2.0.0", generation=2)
    a.agent.stop()
    with (a.data_dir / "slots" / "g2" / "model.onnx").open("r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))  # bit rot, or someone editing the file

    b = start_agent(device_id=a.device_id, data_dir=a.data_dir)
    assert predict(b.endpoint, {"pixels": digits_data.x_test[:1]}).release == "digits:1.0.0"
    event = w.wait_event("rolled_back")
    assert "IntegrityError" in event.message or "digest mismatch" in event.message
    status = w.wait_status(
        lambda s: s.phase is t.InstallPhase.ROLLED_BACK, what="rolled back after restart"
    )
    assert status.active_release == "digits:1.0.0" and "digest mismatch" in status.last_error
    assert status.generation_applied == 2  # the retained desired state is not retried
