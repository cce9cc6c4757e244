"""``InferenceService.Benchmark`` on a running agent: signed specs timed in a separate session,
refusals by what was wrong (key, age, inputs, a benchmark already running)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.agent import benchmarking
from edgefleet.agent.benchmarking import Benchmarker
from edgefleet.agent.metrics import AgentMetrics
from edgefleet.agent.predictor import Predictor
from edgefleet.agent.serving import InferenceServer, InferenceServicer
from edgefleet.common import packing, rpc, signing, wire
from edgefleet.common.signing import TrustStore
from edgefleet.demo.digits import DigitsData, TrainedModel
from edgefleet.v1 import inference_pb2, inference_pb2_grpc
from tests.agent.conftest import StartAgent
from tests.agent.helpers import ArtifactServer, Signer, Watcher, install, predict

NOW_MS = 1_700_000_000_000


@pytest.mark.parametrize(
    ("issued_at_ms", "problem"),
    [
        (NOW_MS, None),
        (NOW_MS - 299_000, None),
        (NOW_MS + 59_000, None),
        (NOW_MS - 301_000, "301s ago (older than 5 minutes: refused as a replay)"),
        (NOW_MS + 61_000, "61s in the future"),
        (0, "ago"),
    ],
)
def test_check_age(issued_at_ms: int, problem: str | None) -> None:
    found = benchmarking.check_age(issued_at_ms, NOW_MS)
    assert found == problem if problem is None else problem in (found or "")


def spec_request(
    key: Ed25519PrivateKey,
    model: bytes,
    inputs: dict[str, np.ndarray],
    *,
    issued_at_ms: int | None = None,
    payload_type: str = signing.BENCHMARK_TYPE,
    runs: int = 20,
) -> inference_pb2.BenchmarkRequest:
    spec = inference_pb2.BenchmarkSpec(
        model=model,
        inputs=[wire.array_to_pb(n, v) for n, v in inputs.items()],
        runs=runs,
        warmup=2,
        threads=1,
        issued_at_ms=issued_at_ms if issued_at_ms is not None else benchmarking._now_ms(),
    )
    env = signing.sign(spec.SerializeToString(deterministic=True), payload_type, key)
    return inference_pb2.BenchmarkRequest(spec=wire.envelope_to_pb(env))


def call(endpoint: str, request: inference_pb2.BenchmarkRequest) -> inference_pb2.BenchmarkResponse:
    with rpc.channel(endpoint) as channel:
        reply: inference_pb2.BenchmarkResponse = inference_pb2_grpc.InferenceServiceStub(
            channel
        ).Benchmark(request, timeout=60)
        return reply


def refusal(endpoint: str, request: inference_pb2.BenchmarkRequest) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call(endpoint, request)
    failed = rpc.error_from_rpc(info.value, target=endpoint)
    return failed.code, failed.detail


def test_benchmark_times_a_signed_model_beside_the_serving_one(
    start_agent: StartAgent,
    signer: Signer,
    artifacts: ArtifactServer,
    watch: Callable[[str], Watcher],
    digits_model: TrainedModel,
    digits_model_v2: TrainedModel,
    digits_data: DigitsData,
) -> None:
    a = start_agent()
    w = watch(a.device_id)
    install(w, signer, artifacts, digits_model.onnx_bytes, version="1.0.0", generation=1)
    x = digits_data.x_test[:1]
    before = predict(a.endpoint, {"pixels": x})
    for model in (digits_model_v2.onnx_bytes, packing.encode(digits_model_v2.onnx_bytes)):
        reply = call(a.endpoint, spec_request(signer.key, model, {"pixels": x}))
        assert reply.runs == 20 and reply.device_id == a.device_id
        assert 0 < reply.p50_ms <= reply.p95_ms <= reply.p99_ms
        assert "CPUExecutionProvider" in reply.providers
        assert reply.cpu_count >= 1  # the speed gate's default thread count
    # the serving runtime was never touched
    after = predict(a.endpoint, {"pixels": x})
    assert after.release == before.release == "digits:1.0.0"
    assert after.outputs == before.outputs


@pytest.mark.parametrize(
    ("change", "code", "text"),
    [
        ("foreign key", grpc.StatusCode.FAILED_PRECONDITION, "signed by unknown key"),
        ("manifest type", grpc.StatusCode.FAILED_PRECONDITION, "payload type"),
        ("stale", grpc.StatusCode.INVALID_ARGUMENT, "refused as a replay"),
        ("future", grpc.StatusCode.INVALID_ARGUMENT, "in the future"),
        ("input name", grpc.StatusCode.INVALID_ARGUMENT, "unknown input 'image'"),
        ("input dtype", grpc.StatusCode.INVALID_ARGUMENT, "expected dtype float32, got float64"),
        ("input shape", grpc.StatusCode.INVALID_ARGUMENT, "refused the inputs"),
        ("not a model", grpc.StatusCode.INVALID_ARGUMENT, "cannot load the benchmark model"),
        ("too many runs", grpc.StatusCode.INVALID_ARGUMENT, "runs <= 10000"),
    ],
)
def test_benchmark_refusals(
    start_agent: StartAgent,
    signer: Signer,
    digits_model: TrainedModel,
    change: str,
    code: grpc.StatusCode,
    text: str,
) -> None:
    a = start_agent()
    key, model, now = signer.key, digits_model.onnx_bytes, benchmarking._now_ms()
    inputs: dict[str, np.ndarray] = {"pixels": np.zeros((1, 64), np.float32)}
    kwargs: dict[str, object] = {}
    if change == "foreign key":
        key = signing.generate()
    elif change == "manifest type":
        kwargs["payload_type"] = signing.MANIFEST_TYPE
    elif change == "stale":
        kwargs["issued_at_ms"] = now - 6 * 60_000
    elif change == "future":
        kwargs["issued_at_ms"] = now + 5 * 60_000
    elif change == "input name":
        inputs = {"image": inputs["pixels"]}
    elif change == "input dtype":
        inputs = {"pixels": np.zeros((1, 64), np.float64)}
    elif change == "input shape":
        inputs = {"pixels": np.zeros((1, 63), np.float32)}
    elif change == "not a model":
        model = b"not onnx"
    elif change == "too many runs":
        kwargs["runs"] = 10_001
    request = spec_request(key, model, inputs, **kwargs)  # type: ignore[arg-type]
    got, detail = refusal(a.endpoint, request)
    assert got == code and text in detail, (got, detail)


@pytest.fixture
def busy_server() -> Iterator[tuple[str, Ed25519PrivateKey, threading.Lock]]:
    """A servicer whose benchmark lock the test holds: as if a benchmark were running."""
    key, busy = signing.generate(), threading.Lock()
    servicer = InferenceServicer(
        Predictor(),
        device_id="d1",
        fleet="lab",
        metrics=AgentMetrics(),
        benchmarker=Benchmarker(TrustStore([key.public_key()]), busy=busy),
    )
    server = InferenceServer(servicer, listen="127.0.0.1:0")
    endpoint = server.start()
    try:
        yield endpoint, key, busy
    finally:
        server.stop(grace=0)


def test_one_benchmark_at_a_time(
    busy_server: tuple[str, Ed25519PrivateKey, threading.Lock],
    digits_model: TrainedModel,
) -> None:
    endpoint, key, busy = busy_server
    request = spec_request(key, digits_model.onnx_bytes, {"pixels": np.zeros((1, 64), np.float32)})
    with busy:
        got, detail = refusal(endpoint, request)
        assert got == grpc.StatusCode.RESOURCE_EXHAUSTED and "another benchmark" in detail
    assert call(endpoint, request).runs == 20
