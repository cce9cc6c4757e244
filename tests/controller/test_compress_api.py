"""``CompressModel`` against a real controller: progress stream, registered child version with its
blobs, a gate nobody passes, bad requests, and ``--profile-on`` through a real device agent's
``Benchmark`` (and an old agent's UNIMPLEMENTED)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from typer.testing import CliRunner

from edgefleet.common import digests, packing, signing, wire
from edgefleet.common.artifacts import BlobStore
from edgefleet.common.errors import PermanentError, SignatureError
from edgefleet.common.signing import TrustStore
from edgefleet.controller.benchmarking import DeviceTimer
from edgefleet.controller.db import Database
from edgefleet.controller.registry import Registry
from edgefleet.demo import digits
from edgefleet.edgectl.app import app
from edgefleet.v1 import controller_pb2 as pb
from edgefleet.v1 import inference_pb2, inference_pb2_grpc
from tests.conftest import Broker
from tests.controller import support
from tests.controller.test_compressed_release import real_agent

RECIPE = "prune-structured-30+cluster-5bit+huffman"  # lossy, packed, fast on the digits MLP
DEADLINE = 120.0


def _npz(**arrays: Any) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _eval(data: digits.DigitsData) -> bytes:
    return _npz(pixels=data.x_test, labels=data.y_test)


def _compress(ctl: support.Running, **fields: object) -> list[pb.CompressProgress]:
    request = pb.CompressRequest(**fields)  # type: ignore[arg-type]
    return list(ctl.stub.CompressModel(request, timeout=DEADLINE))


@pytest.fixture
def model_name(ctl: support.Running, digits_model: digits.TrainedModel) -> str:
    name = support.unique("digits")
    support.upload(ctl.stub, name, digits_model.onnx_bytes)
    return name


def test_a_passing_candidate_becomes_a_child_version(
    ctl: support.Running, model_name: str, digits_data: digits.DigitsData
) -> None:
    stream = _compress(
        ctl,
        name=model_name,
        recipe=f"{RECIPE},int8-dynamic",
        eval_data=_eval(digits_data),
        max_accuracy_drop=1.0,
        # size: the gate does not depend on this machine's timings
        search_objective=pb.OBJECTIVE_SIZE,
    )
    kinds = [m.WhichOneof("update") for m in stream]
    assert kinds[0] == "message" and kinds[-1] == "result"
    candidates = [m for m in stream if m.WhichOneof("update") == "candidate"]
    assert [(m.done, m.total) for m in candidates] == [(1, 2), (2, 2)]
    assert [m.candidate.candidate for m in candidates] == [RECIPE, "int8-dynamic"]

    result = stream[-1].result
    assert result.passed and result.winner == RECIPE
    assert result.original.candidate == "original" and len(result.candidates) == 2
    winner = next(c for c in result.candidates if c.candidate == RECIPE)
    assert winner.passed_gate and winner.transfer_bytes < winner.size_bytes
    assert json.loads(winner.parameters_json)[0]["technique"] == "prune-structured"
    assert json.loads(result.report_json) and RECIPE in result.report_markdown

    new = result.model
    assert (new.name, new.version, new.parent_version) == (model_name, 2, 1)
    assert new.compressed and 0 < new.transfer_size < new.size
    listed = ctl.stub.ListModels(pb.ListModelsRequest(name=model_name), timeout=DEADLINE).models
    assert [(m.version, m.parent_version, m.compressed) for m in listed] == [
        (1, 0, False),
        (2, 1, True),
    ]
    assert listed[1].transfer_size == new.transfer_size

    # What a release of version 2 gets: the report, golden data, the packed container.
    s = ctl.controller.settings
    db = Database(s.database_url)
    try:
        registry = Registry(db, BlobStore(s.blobs_dir), clock=lambda: 0)
        stored = registry.get(model_name, 2)
        artifacts = registry.compression_artifacts(stored)
    finally:
        db.dispose()
    assert artifacts is not None and artifacts.model_encoding == "efpk"
    assert artifacts.transfer is not None and packing.is_packed(artifacts.transfer)
    assert len(artifacts.transfer) == new.transfer_size
    assert digests.of_bytes(artifacts.transfer) == artifacts.transfer_digest
    assert digests.of_bytes(packing.decode(artifacts.transfer)) == new.digest
    assert artifacts.golden_npz and artifacts.golden_digest
    assert json.loads(artifacts.report_json) == json.loads(result.report_json)
    assert registry.compression_artifacts(registry.get(model_name, 1)) is None


def test_no_candidate_passes_nothing_is_registered(
    ctl: support.Running, model_name: str, digits_data: digits.DigitsData
) -> None:
    stream = _compress(
        ctl,
        name=model_name,
        recipe="prune-structured-50",
        eval_data=_eval(digits_data),
        max_accuracy_drop=0.0,
        search_objective=pb.OBJECTIVE_SIZE,
    )
    result = stream[-1].result
    assert not result.passed and not result.winner and not result.HasField("model")
    assert result.candidates[0].verdict.startswith("fails: drop")
    assert json.loads(result.report_json) and result.report_markdown
    listed = ctl.stub.ListModels(pb.ListModelsRequest(name=model_name), timeout=DEADLINE).models
    assert [m.version for m in listed] == [1]


@pytest.mark.parametrize(
    ("fields", "code", "text"),
    [
        ({"eval_data": b"not an npz"}, grpc.StatusCode.INVALID_ARGUMENT, "not a readable .npz"),
        (
            {"eval_data": _npz(pixels=np.zeros((4, 63), np.float32))},
            grpc.StatusCode.INVALID_ARGUMENT,
            "'pixels' is float32[4, 63], the model wants tensor(float)",
        ),
        ({"eval_data": b""}, grpc.StatusCode.INVALID_ARGUMENT, "no eval data"),
        ({"recipe": "int8-dynamic,squash-9"}, grpc.StatusCode.INVALID_ARGUMENT, "squash-9"),
        ({"search_objective": 99}, grpc.StatusCode.INVALID_ARGUMENT, "unknown objective 99"),
        ({"max_accuracy_drop": -1.0}, grpc.StatusCode.INVALID_ARGUMENT, ">= 0"),
        ({"version": 9}, grpc.StatusCode.NOT_FOUND, "version 9"),
        ({"profile_on": "no-such-device"}, grpc.StatusCode.NOT_FOUND, "no-such-device"),
    ],
)
def test_bad_requests_are_refused_before_any_work(
    ctl: support.Running,
    model_name: str,
    digits_data: digits.DigitsData,
    fields: dict[str, object],
    code: grpc.StatusCode,
    text: str,
) -> None:
    request = {"name": model_name, "recipe": "int8-dynamic", "eval_data": _eval(digits_data)}
    failure = support.rpc_error(lambda: _compress(ctl, **{**request, **fields}))
    assert failure.code == code and text in failure.message, failure


def test_unknown_model_is_not_found(ctl: support.Running, digits_data: digits.DigitsData) -> None:
    failure = support.rpc_error(
        lambda: _compress(ctl, name="nope", recipe="int8-dynamic", eval_data=_eval(digits_data))
    )
    assert failure.code == grpc.StatusCode.NOT_FOUND and "nope" in failure.message


# --- --profile-on: a remote Timer through the device agent's Benchmark ----------------------


class _Benchmarking(inference_pb2_grpc.InferenceServiceServicer):
    """An agent's Benchmark that checks the signature like an agent would."""

    def __init__(self, trust: TrustStore) -> None:
        self.trust = trust
        self.specs: list[inference_pb2.BenchmarkSpec] = []

    def Benchmark(
        self, request: inference_pb2.BenchmarkRequest, context: grpc.ServicerContext
    ) -> inference_pb2.BenchmarkResponse:
        payload = self.trust.verify(
            wire.envelope_from_pb(request.spec), expected_type=signing.BENCHMARK_TYPE
        )
        self.specs.append(inference_pb2.BenchmarkSpec.FromString(payload))
        return inference_pb2.BenchmarkResponse(
            p50_ms=1.5, p95_ms=2.5, runs=50, device_id="d1", cpu_count=4
        )


def _agent(servicer: inference_pb2_grpc.InferenceServiceServicer) -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(0).wait()


@pytest.fixture
def old_agent() -> Iterator[str]:
    """An agent from before Benchmark: every call answers UNIMPLEMENTED."""
    yield from _agent(inference_pb2_grpc.InferenceServiceServicer())  # type: ignore[abstract]


def test_device_timer_signs_its_spec(digits_model: digits.TrainedModel) -> None:
    key = signing.generate()
    agent = _Benchmarking(TrustStore([key.public_key()]))  # type: ignore[abstract]
    feed = {"pixels": np.zeros((1, 64), np.float32)}
    for endpoint in _agent(agent):
        timer = DeviceTimer(
            "d1",
            endpoint,
            lambda p: signing.sign(p, signing.BENCHMARK_TYPE, key),
            clock_ms=lambda: 123,
        )
        latency = timer.measure(digits_model.onnx_bytes, feed, threads=2)
        assert (latency.p50_ms, latency.p90_ms, latency.threads) == (1.5, 2.5, 2)
        assert latency.cores == 4  # the device's CPUs: the speed gate's default threads
        assert timer.where == "device:d1"
    (spec,) = agent.specs
    assert spec.model == digits_model.onnx_bytes and spec.threads == 2
    assert spec.issued_at_ms == 123 and spec.inputs[0].name == "pixels"
    with pytest.raises(SignatureError, match="payload type"):  # a Manifest signature does not pass
        TrustStore([key.public_key()]).verify(
            signing.sign(spec.SerializeToString(), signing.MANIFEST_TYPE, key),
            expected_type=signing.BENCHMARK_TYPE,
        )


def test_device_timer_on_an_agent_without_benchmark(
    old_agent: str, digits_model: digits.TrainedModel
) -> None:
    key = signing.generate()
    timer = DeviceTimer("d1", old_agent, lambda p: signing.sign(p, signing.BENCHMARK_TYPE, key))
    with pytest.raises(PermanentError, match="does not implement Benchmark"):
        timer.measure(digits_model.onnx_bytes, {"pixels": np.zeros((1, 64), np.float32)}, threads=1)


def test_profile_on_a_device_times_candidates_on_its_agent(
    ctl: support.Running,
    model_name: str,
    digits_data: digits.DigitsData,
    broker: Broker,
    tmp_path: Path,
) -> None:
    fleet = support.unique("fleet")
    with real_agent(ctl, broker, tmp_path, fleet=fleet) as (agent, endpoint):
        stream = _compress(
            ctl,
            name=model_name,
            recipe="int8-dynamic",
            eval_data=_eval(digits_data),
            max_accuracy_drop=5.0,
            search_objective=pb.OBJECTIVE_SIZE,
            profile_on=agent.device_id,
        )
        result = stream[-1].result
        assert result.original.p50_ms > 0 and all(c.p50_ms > 0 for c in result.candidates)
        for c in result.candidates:  # timed interleaved with the original, on the device
            assert c.speed_rounds > 0 and c.speed_ratio_low <= c.speed_ratio <= c.speed_ratio_high
        assert f"device:{agent.device_id}" in result.report_json

        # the same through edgectl's --profile-on: the report says where it was timed
        data = tmp_path / "eval.npz"
        data.write_bytes(_eval(digits_data))
        report = tmp_path / "report.md"
        cli = CliRunner(env={"EDGECTL_TOKEN": ctl.token}).invoke(
            app,
            ["--controller", ctl.api, "model", "compress", model_name, "--version", "1",
             "--eval-data", str(data), "--recipe", "int8-dynamic", "--max-accuracy-drop", "5",
             "--objective", "size", "--profile-on", agent.device_id,
             "--report-out", str(report), "--json"],
        )  # fmt: skip
        assert cli.exit_code == 0, cli.stdout + cli.stderr
        assert f"timed on device:{agent.device_id}" in report.read_text()

        # the agent runs only specs signed by a key it trusts
        foreign = signing.generate()
        timer = DeviceTimer(
            agent.device_id, endpoint, lambda p: signing.sign(p, signing.BENCHMARK_TYPE, foreign)
        )
        feed = {"pixels": np.zeros((1, 64), np.float32)}
        with pytest.raises(PermanentError, match="signed by unknown key"):
            timer.measure(ctl_model(ctl, model_name), feed, threads=1)


def ctl_model(ctl: support.Running, name: str) -> bytes:
    s = ctl.controller.settings
    db = Database(s.database_url)
    try:
        registry = Registry(db, BlobStore(s.blobs_dir), clock=lambda: 0)
        return BlobStore(s.blobs_dir).read(registry.get(name, 1).digest)
    finally:
        db.dispose()
