"""Predict, ModelInfo, health, /metrics and telemetry of a running agent."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgefleet.agent.errors import NoActiveModelError
from edgefleet.agent.predictor import Predictor
from edgefleet.agent.runtime import LoadedModel, ModelRuntime
from edgefleet.common import types as t
from edgefleet.common.errors import InvalidInputError, ModelLoadError
from edgefleet.demo.digits import DigitsData, TrainedModel
from tests.agent.conftest import RunningAgent, StartAgent
from tests.agent.helpers import (
    DIGITS_INPUTS,
    DIGITS_OUTPUTS,
    ArtifactServer,
    Signer,
    Watcher,
    predict,
    wait_for,
)


def runtime_for(path: Path, inputs: tuple[t.TensorSpec, ...] = DIGITS_INPUTS) -> ModelRuntime:
    manifest = t.Manifest(
        name="digits",
        version="1.0.0",
        model_digest="sha256:" + "0" * 64,
        model_size=1,
        inputs=inputs,
        outputs=DIGITS_OUTPUTS,
    )
    return ModelRuntime.load(path, LoadedModel("digits:1.0.0", "g1", manifest, "sha256:x"))


# --- in process ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"image": np.zeros((1, 64), np.float32)}, "unknown input 'image'"),
        (
            {"pixels": np.zeros((1, 64), np.float32), "extra": np.zeros(1, np.float32)},
            "unknown input 'extra'",
        ),
        ({}, "missing input 'pixels'"),
        (
            {"pixels": np.zeros((1, 64), np.float64)},
            "input 'pixels': expected dtype float32, got float64",
        ),
        (
            {"pixels": np.zeros((1, 63), np.float32)},
            "input 'pixels': expected shape pixels: float32[?,64], got pixels: float32[1,63]",
        ),
        ({"pixels": np.zeros(64, np.float32)}, "expected shape pixels: float32[?,64]"),
    ],
)
def test_predictor_names_the_input_that_does_not_fit(
    digits_model_path: Path, inputs: dict[str, np.ndarray], message: str
) -> None:
    p = Predictor(runtime_for(digits_model_path))
    with pytest.raises(InvalidInputError, match=message.replace("[", r"\[").replace("?", r"\?")):
        p.predict(inputs)


def test_predictor_runs_and_filters_outputs(
    digits_model_path: Path, digits_data: DigitsData
) -> None:
    p = Predictor()
    with pytest.raises(NoActiveModelError):
        p.predict({"pixels": digits_data.x_test[:1]})
    p.swap(runtime_for(digits_model_path))
    out = p.predict({"pixels": digits_data.x_test[:16]})
    assert set(out) == {"probabilities", "label"} and out["label"].shape == (16,)
    assert set(p.predict({"pixels": digits_data.x_test[:1]}, ["label"])) == {"label"}
    with pytest.raises(InvalidInputError, match="unknown output 'nope'"):
        p.predict({"pixels": digits_data.x_test[:1]}, ["nope"])


def test_runtime_uses_orts_own_run(digits_model_path: Path, digits_data: DigitsData) -> None:
    """The hot path calls ORT's C++ run (see ``runtime._run_of``); an ORT upgrade that moves it
    would silently fall back to the slower public wrapper, so say so here."""
    rt = runtime_for(digits_model_path)
    assert rt._run == rt.session._sess.run
    feed = {"pixels": digits_data.x_test[:5]}
    fast = rt.predict(feed)
    for name, value in zip(rt.output_names, rt.session.run(rt.output_names, feed), strict=True):
        np.testing.assert_array_equal(fast[name], value)


def test_manifest_signature_must_match_the_model(digits_model_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="model inputs"):
        runtime_for(digits_model_path, (t.TensorSpec("image", "float32", (-1, 64)),))
    with pytest.raises(ModelLoadError, match="manifest says pixels: int64"):
        runtime_for(digits_model_path, (t.TensorSpec("pixels", "int64", (-1, 64)),))
    # a manifest may pin a dimension the model leaves dynamic
    rt = runtime_for(digits_model_path, (t.TensorSpec("pixels", "float32", (4, 64)),))
    with pytest.raises(InvalidInputError, match=r"float32\[4,64\], got pixels: float32\[1,64\]"):
        rt.predict({"pixels": np.zeros((1, 64), np.float32)})


# --- over gRPC -------------------------------------------------------------------------------


@pytest.fixture
def serving(
    start_agent: StartAgent,
    watch: Callable[[str], Watcher],
    signer: Signer,
    artifacts: ArtifactServer,
    digits_model: TrainedModel,
) -> Iterator[tuple[RunningAgent, Watcher]]:
    a = start_agent()
    w = watch(a.device_id)
    with grpc.insecure_channel(a.endpoint) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        before = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert before.status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as err:
            predict(a.endpoint, {"pixels": np.zeros((1, 64), np.float32)})
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        release = signer.release(digits_model.onnx_bytes)
        artifacts.put(digits_model.onnx_bytes)
        w.publish_desired(signer.desired(release, device_id=a.device_id, generation=1))
        w.wait_status(lambda s: s.phase is t.InstallPhase.ACTIVE, what="active")
        service = "edgefleet.v1.InferenceService"
        after = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert after.status == health_pb2.HealthCheckResponse.SERVING
    yield a, w


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"image": np.zeros((1, 64), np.float32)}, "unknown input 'image'"),
        ({"pixels": np.zeros((1, 64), np.float64)}, "expected dtype float32, got float64"),
        ({"pixels": np.zeros((2, 65), np.float32)}, "got pixels: float32[2,65]"),
    ],
)
def test_predict_refuses_what_does_not_fit_with_invalid_argument(
    serving: tuple[RunningAgent, Watcher], inputs: dict[str, np.ndarray], message: str
) -> None:
    a, _ = serving
    with pytest.raises(grpc.RpcError) as err:
        predict(a.endpoint, inputs)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.details()


def test_metrics_and_telemetry(
    serving: tuple[RunningAgent, Watcher], digits_data: DigitsData, digits_model: TrainedModel
) -> None:
    a, w = serving
    for _ in range(20):
        predict(a.endpoint, {"pixels": digits_data.x_test[:4]}, output_names=["label"])
    with pytest.raises(grpc.RpcError):
        predict(a.endpoint, {"pixels": digits_data.x_test[:4, :10]})

    url = f"http://127.0.0.1:{a.endpoints.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    assert "edgefleet_inference_requests_total 22.0" in text  # 1 refused before the install
    assert 'edgefleet_inference_errors_total{reason="invalid_argument"} 1.0' in text
    assert 'edgefleet_inference_errors_total{reason="no_model"} 1.0' in text
    assert "edgefleet_inference_latency_seconds_bucket" in text
    assert "edgefleet_inference_in_flight 0.0" in text
    assert 'edgefleet_install_phase_seconds_count{phase="fetching"} 1.0' in text
    assert f"edgefleet_download_bytes_total {len(digits_model.onnx_bytes)}.0" in text
    assert 'edgefleet_active_release_info{manifest_digest="sha256:' in text
    assert 'release="digits:1.0.0"' in text
    assert "edgefleet_model_load_seconds_count 1.0" in text

    wait_for(
        "telemetry counting the requests",
        lambda: (
            sum(x.requests for x in w.telemetry) >= 21 and sum(x.errors for x in w.telemetry) >= 1
        ),
    )
    sample = max(w.telemetry, key=lambda x: x.requests)
    assert sample.release == "digits:1.0.0" and sample.p50_ms > 0
    assert sample.p50_ms <= sample.p95_ms <= sample.p99_ms
    assert sample.memory_bytes > 0 and sample.power_w is None
