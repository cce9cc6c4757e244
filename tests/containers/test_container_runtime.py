"""Container releases on a real agent, a real dockerd and a real registry.

Each test acts as the controller: it builds the release image as ``edgectl release create
--runtime container`` does (the runtime base plus a layer with the model), pushes it to the
registry, signs a manifest naming the image's digest and sends the device a desired state whose
sources name the registry; the agent pulls, verifies, starts and health-checks the container,
then forwards its Predict to it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from edgefleet.agent import containers, tensors
from edgefleet.agent.runtime import Array, LoadedModel, ModelRuntime
from edgefleet.common import types as t
from edgefleet.demo.digits import DigitsData, TrainedModel
from edgefleet.v1 import inference_pb2
from tests.agent import faults
from tests.agent.helpers import (
    ArtifactServer,
    Signer,
    active_on,
    model_info,
    predict,
    wait_for,
)
from tests.containers.conftest import ContainerAgent, Images, container_release


def _outputs(reply: inference_pb2.PredictResponse) -> dict[str, Array]:
    return tensors.decode_all(reply.outputs)


def _running(release_images: Images, device_id: str) -> list[str]:
    return [c.id for c in release_images.ours(device_id) if c.status == "running"]


def test_a_container_release_serves_what_the_model_does_in_process(
    container_agent: ContainerAgent,
    signer: Signer,
    artifacts: ArtifactServer,
    release_images: Images,
    digits_model: TrainedModel,
    digits_data: DigitsData,
    tmp_path: Path,
) -> None:
    a, w = container_agent
    hello = w.wait_status(lambda s: bool(s.runtimes), what="a status naming the runtimes")
    assert hello.runtimes == ("onnxruntime", "container")

    release = release_images.release(signer, digits_model.onnx_bytes, version="1.0.0")
    release_images.client.images.remove(release.manifest.image, force=True)  # so it is pulled
    release_images.send(w, signer, artifacts, release, 1)
    w.wait_status(active_on(release.ref), what="container release active", timeout=120)

    x = digits_data.x_test[:16]
    reply = predict(a.endpoint, {"pixels": x})
    assert reply.release == "digits:1.0.0" and reply.device_id == a.device_id
    path = tmp_path / "digits.onnx"
    path.write_bytes(digits_model.onnx_bytes)
    in_process = replace(release.manifest, runtime="onnxruntime", image="")
    local = ModelRuntime.load(path, LoadedModel("digits:1.0.0", "local", in_process, "")).predict(
        {"pixels": x}
    )
    served = _outputs(reply)
    np.testing.assert_array_equal(served["label"], local["label"])
    np.testing.assert_allclose(served["probabilities"], local["probabilities"], atol=1e-6)

    (cid,) = _running(release_images, a.device_id)
    c = release_images.client.containers.get(cid)
    host = c.attrs["HostConfig"]
    assert host["ReadonlyRootfs"] and host["NetworkMode"] == "bridge"
    assert "no-new-privileges" in host["SecurityOpt"] and host["Memory"] > 0
    assert c.labels[containers.LABEL_RELEASE] == "digits:1.0.0"
    assert c.image.id == release.manifest.image
    assert model_info(a.endpoint).release == "digits:1.0.0"


def test_a_bad_container_is_rolled_back_and_the_old_one_keeps_serving(
    container_agent: ContainerAgent,
    signer: Signer,
    artifacts: ArtifactServer,
    release_images: Images,
    digits_model: TrainedModel,
    digits_data: DigitsData,
) -> None:
    a, w = container_agent
    good = release_images.release(signer, digits_model.onnx_bytes, version="1.0.0")
    release_images.send(w, signer, artifacts, good, 1)
    w.wait_status(active_on(good.ref), what="good release active", timeout=120)
    (serving,) = _running(release_images, a.device_id)

    # fails its health check: the model answers NaN
    nan = release_images.release(
        signer, faults.nan_scores(digits_model.onnx_bytes), version="1.1.0"
    )
    release_images.send(w, signer, artifacts, nan, 2)
    failed = w.wait_event("install_failed", generation=2, timeout=120)
    assert "NaN or infinity" in failed.message and "still serving: digits:1.0.0" in failed.message
    assert predict(a.endpoint, {"pixels": digits_data.x_test[:1]}).release == "digits:1.0.0"
    wait_for("only the old container", lambda: _running(release_images, a.device_id) == [serving])

    # crashes at start: the image holds no loadable model
    crash = release_images.release(signer, b"not an onnx model", version="1.2.0")
    release_images.send(w, signer, artifacts, crash, 3)
    failed = w.wait_event("install_failed", generation=3, timeout=120)
    assert "exited with status" in failed.message and "ONNX Runtime cannot load" in failed.message
    assert predict(a.endpoint, {"pixels": digits_data.x_test[:1]}).release == "digits:1.0.0"
    wait_for(
        "only the old container",
        lambda: [c.id for c in release_images.ours(a.device_id)] == [serving],
    )


def test_an_image_that_is_not_the_signed_one_is_refused(
    container_agent: ContainerAgent,
    signer: Signer,
    artifacts: ArtifactServer,
    release_images: Images,
    digits_model: TrainedModel,
    digits_model_v2: TrainedModel,
) -> None:
    a, w = container_agent
    # the registry serves an image of another model under the release's tag
    other = release_images.build(digits_model_v2.onnx_bytes, version="2.0.0")
    pushed = signer.release(digits_model_v2.onnx_bytes, version="2.0.0")
    release_images.push(container_release(signer, pushed, other.digest).manifest)
    signed = "sha256:" + "ab" * 32  # what the manifest signs: no such image anywhere
    release = container_release(
        signer, signer.release(digits_model.onnx_bytes, version="2.0.0"), signed
    )
    release_images.send(w, signer, artifacts, release, 1)
    failed = w.wait_event("install_failed", generation=1, timeout=120)
    assert "digest mismatch" in failed.message and signed in failed.message
    assert release_images.ours(a.device_id) == []
    status = w.wait_status(lambda s: s.phase is t.InstallPhase.FAILED, what="failed")
    assert status.active_release == ""
