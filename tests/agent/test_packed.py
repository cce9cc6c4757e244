"""Packed releases (``model_encoding == "efpk"``): the agent fetches and verifies the packed
blob, decodes it into the slot's ``model.onnx``, re-verifies both at start; a blob that does
not decode, or an unknown encoding, fails the install while the old model keeps serving."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnxruntime as ort

from edgefleet.common import digests, packing, wire
from edgefleet.common import types as t
from edgefleet.demo.digits import DigitsData, TrainedModel
from tests.agent.conftest import StartAgent
from tests.agent.helpers import (
    ArtifactServer,
    Signer,
    Watcher,
    active_on,
    install,
    predict,
)


def test_a_packed_release_is_decoded_served_and_reverified_at_start(
    start_agent: StartAgent,
    watch: Callable[[str], Watcher],
    signer: Signer,
    artifacts: ArtifactServer,
    digits_model: TrainedModel,
    digits_data: DigitsData,
) -> None:
    a = start_agent()
    w = watch(a.device_id)
    model = digits_model.onnx_bytes
    packed = packing.encode(model)
    decoded = {"decoded_model_digest": digests.of_bytes(model)}
    release = signer.release(packed, encoding="efpk", annotations=decoded)
    artifacts.publish(release)
    w.publish_desired(signer.desired(release, device_id=a.device_id, generation=1))
    w.wait_status(active_on(release.ref), what="active on the packed release")

    x = digits_data.x_test[:5]
    reply = predict(a.endpoint, {"pixels": x})
    got = {o.name: wire.array_from_pb(o) for o in reply.outputs}
    want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"pixels": x})
    np.testing.assert_array_equal(got["probabilities"], want[0])
    slot = a.data_dir / "slots" / "g1"
    assert (slot / "model.onnx").read_bytes() == model
    assert (slot / "model.efpk").read_bytes() == packed
    assert artifacts.fetches == [(release.manifest.model_digest, 0)]

    a.agent.stop()
    b = start_agent(device_id=a.device_id, data_dir=a.data_dir)
    assert predict(b.endpoint, {"pixels": x}).release == "digits:1.0.0"

    # model.onnx changed on disk: the container's recorded digest catches it at start
    b.agent.stop()
    tampered = bytearray(model)
    tampered[-10] ^= 0xFF
    (slot / "model.onnx").unlink()  # a hard link to nothing else, but do not write through
    (slot / "model.onnx").write_bytes(bytes(tampered))
    w2 = watch(a.device_id)
    c = start_agent(device_id=a.device_id, data_dir=a.data_dir)
    lost = w2.wait_event("model_lost")
    assert "digest mismatch" in lost.message
    assert c.agent.predictor.current is None


def _failed_install(
    w: Watcher, signer: Signer, artifacts: ArtifactServer, blob: bytes, **kw: object
) -> t.DeviceEvent:
    release = signer.release(blob, version="2.0.0", **kw)  # type: ignore[arg-type]
    artifacts.put(blob)
    w.publish_desired(signer.desired(release, device_id=w.device_id, generation=2))
    return w.wait_event("install_failed", generation=2)


def test_packed_blobs_that_do_not_decode_fail_the_install(
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

    garbage = b"EFPK\x01" + b"\xff" * 64
    failed = _failed_install(w, signer, artifacts, garbage, encoding="efpk")
    assert "ModelDecodeError" in failed.message and "cannot unpack the model" in failed.message
    assert "still serving: digits:1.0.0" in failed.message
    assert predict(a.endpoint, {"pixels": digits_data.x_test[:1]}).release == "digits:1.0.0"
    assert sorted(p.name for p in (a.data_dir / "slots").iterdir()) == ["g1"]


def test_a_packed_blob_decoding_to_another_model_fails(
    start_agent: StartAgent,
    watch: Callable[[str], Watcher],
    signer: Signer,
    artifacts: ArtifactServer,
    digits_model: TrainedModel,
    digits_model_v2: TrainedModel,
) -> None:
    a = start_agent()
    w = watch(a.device_id)
    install(w, signer, artifacts, digits_model.onnx_bytes, version="1.0.0", generation=1)
    packed = packing.encode(digits_model_v2.onnx_bytes)
    lying = {"decoded_model_digest": digests.of_bytes(digits_model.onnx_bytes)}
    failed = _failed_install(w, signer, artifacts, packed, encoding="efpk", annotations=lying)
    assert "decodes to" in failed.message and "the manifest says" in failed.message


def test_an_unknown_encoding_fails_before_any_download(
    start_agent: StartAgent,
    watch: Callable[[str], Watcher],
    signer: Signer,
    artifacts: ArtifactServer,
    digits_model: TrainedModel,
    digits_model_v2: TrainedModel,
) -> None:
    a = start_agent()
    w = watch(a.device_id)
    install(w, signer, artifacts, digits_model.onnx_bytes, version="1.0.0", generation=1)
    fetched = len(artifacts.fetches)
    blob = digits_model_v2.onnx_bytes
    failed = _failed_install(w, signer, artifacts, blob, encoding="zstd")
    assert "unsupported model encoding 'zstd'" in failed.message
    assert len(artifacts.fetches) == fetched
