"""A release of a compressed model version, end to end: compress through the gRPC API, release,
deploy to a real agent, which downloads the packed container, decodes it and serves the
compressed model."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgefleet.agent import config
from edgefleet.agent.daemon import Agent
from edgefleet.common import digests, wire
from edgefleet.common.artifacts import BlobStore
from edgefleet.demo import digits
from edgefleet.v1 import controller_pb2 as pb
from tests.agent.helpers import predict
from tests.conftest import Broker
from tests.controller import support

RECIPE = "prune-structured-30+cluster-5bit+huffman"
DEADLINE = 120.0


@contextmanager
def real_agent(
    ctl: support.Running, broker: Broker, tmp_path: Path, *, fleet: str
) -> Iterator[tuple[Agent, str]]:
    """A real agent in this process trusting the controller's keys, registered in ``fleet``;
    with its Predict endpoint."""
    ctl.stub.InitKey(pb.InitKeyRequest(), timeout=DEADLINE)
    keys = ctl.stub.ListKeys(pb.ListKeysRequest(), timeout=DEADLINE).keys
    key_file = tmp_path / "controller-keys.pem"
    key_file.write_text("".join(k.public_key_pem for k in keys))
    device_id = support.unique("dev")
    agent = Agent(
        config.merge(
            {
                "device_id": device_id,
                "fleet": fleet,
                "mqtt": broker.url,
                "controller": ctl.address,
                "data_dir": tmp_path / device_id,
                "predict_listen": "127.0.0.1:0",
                "metrics_port": -1,
                "trusted_keys": (key_file,),
                "telemetry_interval": 1.0,
            }
        )
    )
    try:
        endpoint = agent.start().predict

        def announced() -> bool:
            devices = ctl.stub.ListDevices(pb.ListDevicesRequest(fleet=fleet), timeout=DEADLINE)
            return any(d.device_id == device_id and d.predict_endpoint for d in devices.devices)

        support.eventually(announced, what="the agent's status", timeout=20)
        yield agent, endpoint
    finally:
        agent.stop()


def test_a_compressed_version_releases_packed_and_serves_on_an_agent(
    ctl: support.Running,
    broker: Broker,
    tmp_path: Path,
    digits_model: digits.TrainedModel,
    digits_data: digits.DigitsData,
) -> None:
    name = support.unique("digits")
    support.upload(ctl.stub, name, digits_model.onnx_bytes)
    buf = io.BytesIO()
    np.savez(buf, pixels=digits_data.x_test, labels=digits_data.y_test)
    request = pb.CompressRequest(
        name=name,
        recipe=RECIPE,
        eval_data=buf.getvalue(),
        max_accuracy_drop=5.0,
        search_objective=pb.OBJECTIVE_SIZE,
    )
    result = list(ctl.stub.CompressModel(request, timeout=DEADLINE))[-1].result
    assert result.passed, result.candidates
    compressed = result.model
    ctl.stub.InitKey(pb.InitKeyRequest(), timeout=DEADLINE)
    ctl.stub.CreateRelease(
        pb.CreateReleaseRequest(name=name, version="2.0.0", model_version=compressed.version),
        timeout=DEADLINE,
    )
    (info,) = [
        r
        for r in ctl.stub.ListReleases(pb.ListReleasesRequest(name=name), timeout=DEADLINE).releases
    ]
    manifest = wire.decode_manifest(wire.envelope_from_pb(info.signed_manifest).payload)
    assert manifest.model_encoding == "efpk"
    assert manifest.model_size == compressed.transfer_size < compressed.size
    assert manifest.annotations["decoded_model_digest"] == compressed.digest
    assert RECIPE in manifest.compression_report_json
    assert manifest.golden_digest and manifest.golden_size > 0  # the compression's golden data

    fleet = support.unique("fleet")
    with real_agent(ctl, broker, tmp_path, fleet=fleet) as (agent, endpoint):
        answer = ctl.stub.Deploy(
            pb.DeployRequest(release=f"{name}:2.0.0", fleet=fleet), timeout=DEADLINE
        )
        support.wait_phase(ctl.stub, answer.rollout_id, "succeeded")
        runtime = agent.predictor.current
        assert runtime is not None and runtime.release == f"{name}:2.0.0"

        model = BlobStore(ctl.controller.settings.blobs_dir).read(compressed.digest)
        assert digests.of_bytes(model) == compressed.digest
        x = digits_data.x_test[:16]
        reply = predict(endpoint, {"pixels": x})
        got = {o.name: wire.array_from_pb(o) for o in reply.outputs}
        session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        want = dict(zip(["probabilities", "label"], session.run(None, {"pixels": x}), strict=True))
        np.testing.assert_array_equal(got["probabilities"], want["probabilities"])
        np.testing.assert_array_equal(got["label"], want["label"])
        downloaded = agent.metrics.registry.get_sample_value("edgefleet_download_bytes_total")
        assert downloaded == manifest.model_size + manifest.golden_size
        assert manifest.model_size < len(digits_model.onnx_bytes)
