"""all-MiniLM-L6-v2 (a 90 MB pretrained text encoder: int64 inputs, dynamic sequence length,
[N, 384] embeddings) through the whole path: compress with a time budget and a cosine gate,
release with the golden data the winner made, canary deploy to two real agents, each of which
passes its own golden check, the rollout succeeds, and Predict on each answers what ONNX
Runtime computes with the winner."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from edgefleet.common import wire
from edgefleet.controller.compress import corpus, fp16, graphs
from edgefleet.v1 import controller_pb2 as pb
from tests.conftest import Broker
from tests.controller import support

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
        # the speed of int8 kernels depends on the CPU; size does not
        search_objective=pb.OBJECTIVE_SIZE,
        time_budget_s=60.0,
    )
    updates = list(ctl.stub.CompressModel(request, timeout=helpers.DEADLINE))
    result = updates[-1].result
    assert any(u.WhichOneof("update") == "message" and "about" in u.message for u in updates)
    (candidate,) = result.candidates
    assert candidate.metric == "cosine-similarity", candidate  # not argmax over 384 dims
    assert result.passed and result.winner == "int8-dynamic", candidate.verdict
    assert candidate.seconds > 0
    report = json.loads(result.report_json)
    assert report["metric"] == "cosine-similarity" and report["time_budget_s"] == 60.0
    golden = report["golden"]
    assert golden is not None and set(golden["tolerances"]) == {"sentence_embedding"}

    compressed = result.model
    release = f"{name}:2.0.0"
    info = helpers.release(ctl, name, "2.0.0", model_version=compressed.version)
    manifest = wire.decode_manifest(wire.envelope_from_pb(info.signed_manifest).payload)
    assert manifest.golden_digest  # attached: its tolerances hold

    text = corpus.tokenize(["Devices check their model against golden data."], length=12)
    shipped = helpers.canary_to_two_agents(ctl, broker, tmp_path, release, compressed.digest, text)
    assert shipped.deployed, shipped.why
    assert shipped.predict_matches, shipped.predict_error
    for device in shipped.devices:  # each passed its own golden check before it served
        passed = helpers.event(ctl, device, "health_check_passed", release)
        assert f"{golden['count']} golden rows pass" in passed


def test_fp16_of_minilm_is_topologically_sorted_and_passes_the_checker(minilm: bytes) -> None:
    out = fp16.convert_fp16(minilm)
    onnx.checker.check_model(onnx.load_model_from_string(out.model))
    graphs.validate_model(out.model, [corpus.tokenize(corpus.SENTENCES[:2], length=8)])
