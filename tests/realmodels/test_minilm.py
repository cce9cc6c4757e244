"""all-MiniLM-L6-v2 (a 90 MB pretrained text encoder: int64 inputs, dynamic sequence length,
[N, 384] embeddings) through the whole path: compress with a time budget and a cosine gate,
release with the golden data the winner made, deploy to a real agent, which passes its own
golden check, and Predict answers what ONNX Runtime computes with the winner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgefleet.common import wire
from edgefleet.common.artifacts import BlobStore
from edgefleet.controller.compress import corpus, fp16, graphs
from edgefleet.v1 import controller_pb2 as pb
from tests.agent.helpers import predict
from tests.conftest import Broker
from tests.controller import support
from tests.controller.test_compressed_release import real_agent

from . import helpers

pytestmark = pytest.mark.slow


def test_minilm_compresses_under_a_cosine_gate_and_its_release_passes_its_own_canary(
    ctl: support.Running, broker: Broker, tmp_path: Path, minilm: bytes
) -> None:
    name = support.unique("minilm")
    helpers.upload(ctl, name, minilm)
    tokens = corpus.tokenize(corpus.SENTENCES, length=16)
    request = pb.CompressRequest(
        name=name,
        recipe="int8-dynamic",
        eval_data=helpers.npz(**tokens),
        max_accuracy_drop=10.0,  # cosine similarity >= 0.90
        objective="size",  # the speed of int8 kernels depends on the CPU; size does not
        time_budget_s=240.0,
    )
    updates = list(ctl.stub.CompressModel(request, timeout=helpers.DEADLINE))
    result = updates[-1].result
    assert any(u.WhichOneof("update") == "message" and "about" in u.message for u in updates)
    (candidate,) = result.candidates
    assert candidate.metric == "cosine-similarity", candidate  # not argmax over 384 dims
    assert result.passed and result.winner == "int8-dynamic", candidate.verdict
    assert candidate.seconds > 0
    report = json.loads(result.report_json)
    assert report["metric"] == "cosine-similarity" and report["time_budget_s"] == 240.0
    golden = report["golden"]
    assert golden is not None and set(golden["tolerances"]) == {"sentence_embedding"}

    compressed = result.model
    info = helpers.release(ctl, name, "2.0.0", model_version=compressed.version)
    manifest = wire.decode_manifest(wire.envelope_from_pb(info.signed_manifest).payload)
    assert manifest.golden_digest  # attached: its tolerances hold

    fleet = support.unique("fleet")
    with real_agent(ctl, broker, tmp_path, fleet=fleet) as (agent, endpoint):
        helpers.deploy(ctl, f"{name}:2.0.0", fleet)
        passed = helpers.event(ctl, agent.device_id, "health_check_passed", f"{name}:2.0.0")
        assert f"{golden['count']} golden rows pass" in passed
        text = corpus.tokenize(["Devices check their model against golden data."], length=12)
        reply = predict(endpoint, text)
        got = {o.name: wire.array_from_pb(o) for o in reply.outputs}["sentence_embedding"]
        model = BlobStore(ctl.controller.settings.blobs_dir).read(compressed.digest)
        session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        (want,) = session.run(None, text)
        np.testing.assert_allclose(got, want, atol=golden["tolerance"], rtol=0)


def test_fp16_of_minilm_is_topologically_sorted_and_passes_the_checker(minilm: bytes) -> None:
    out = fp16.convert_fp16(minilm)
    onnx.checker.check_model(onnx.load_model_from_string(out.model))
    graphs.validate_model(out.model, [corpus.tokenize(corpus.SENTENCES[:2], length=8)])
