"""Execution providers: a release's preference, the one chosen, the fallback and its event.

Real ONNX Runtime throughout: the CPU provider runs here; CUDA and TensorRT are not in this
wheel, so a preference naming them first falls back to the CPU with a ``provider_fallback``
event, and the status and /metrics name the CPU. The other flavours (``onnxruntime-openvino``:
OpenVINO runs, asked for a missing NPU it falls back; ``onnxruntime-gpu`` without a GPU: CUDA
listed but not starting) are tested for real in venvs of their own, with a real agent process
and controller: tests/deploy/test_device_providers.py.
"""

from __future__ import annotations

import platform
import urllib.request
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import onnxruntime as ort
import pytest

from edgefleet.agent import providers
from edgefleet.common import digests, signing, wire
from edgefleet.common import types as t
from edgefleet.demo.digits import TrainedModel
from tests.agent.conftest import StartAgent
from tests.agent.helpers import (
    ArtifactServer,
    Release,
    Signer,
    Watcher,
    active_on,
    offer,
    wait_for,
)

CPU = t.ExecutionProvider("CPUExecutionProvider")
CUDA = t.ExecutionProvider("CUDAExecutionProvider")
TRT = t.ExecutionProvider("TensorrtExecutionProvider", {"trt_fp16_enable": "1"})
GPU_FIRST = (TRT, CUDA, CPU)
# where CUDA is really offered, a GPU-first release runs on it: no fallback to see
without_cuda = pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(),
    reason="this ONNX Runtime offers CUDA",
)


def _options() -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return options


@pytest.fixture
def model_file(tmp_path: Path, digits_model: TrainedModel) -> Path:
    slot = tmp_path / "slots" / "g1"
    slot.mkdir(parents=True)
    path = slot / "model.onnx"
    path.write_bytes(digits_model.onnx_bytes)
    return path


def test_no_preference_runs_on_the_cpu(model_file: Path) -> None:
    opened = providers.open_session(
        model_file, (), slot_dir=model_file.parent, make_options=_options
    )
    assert opened.provider == "CPUExecutionProvider" and opened.fallback == ""
    assert opened.session.get_providers()[0] == "CPUExecutionProvider"


def test_gpu_providers_missing_from_this_wheel_fall_back_to_the_cpu(model_file: Path) -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this ONNX Runtime offers CUDA: the fallback is not what happens here")
    opened = providers.open_session(
        model_file, GPU_FIRST, slot_dir=model_file.parent, make_options=_options
    )
    assert opened.provider == "CPUExecutionProvider"
    assert [line.split()[0] for line in opened.passed_over] == [
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
    ]
    assert "is not in this ONNX Runtime" in opened.fallback
    assert opened.fallback.startswith("running on CPUExecutionProvider: ")


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_a_listed_provider_that_does_not_initialise_is_passed_over(model_file: Path) -> None:
    """onnxruntime-gpu on a machine without a GPU lists CUDA, and a CUDA session quietly runs
    on the CPU: the session's own first provider is what counts."""
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is really here")
    offered = ("CUDAExecutionProvider", "CPUExecutionProvider")
    opened = providers.open_session(
        model_file,
        (CUDA, CPU),
        slot_dir=model_file.parent,
        make_options=_options,
        available=offered,
    )
    assert opened.provider == "CPUExecutionProvider"
    assert len(opened.passed_over) == 1 and opened.passed_over[0].startswith(
        "CUDAExecutionProvider "
    )


def test_the_cpu_named_first_is_no_fallback(model_file: Path) -> None:
    opened = providers.open_session(
        model_file, (CPU, CUDA), slot_dir=model_file.parent, make_options=_options
    )
    assert (opened.provider, opened.passed_over) == ("CPUExecutionProvider", ())


def test_tensorrt_keeps_its_engine_cache_in_the_slot(tmp_path: Path) -> None:
    mine = t.ExecutionProvider(
        "TensorrtExecutionProvider", {"trt_fp16_enable": "1", "trt_engine_cache_path": "/tmp/x"}
    )
    options = providers.options_for(mine, slot_dir=tmp_path / "g3")
    assert options == {
        "trt_fp16_enable": "1",
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": str(tmp_path / "g3" / providers.TRT_CACHE_DIR),
    }
    assert (tmp_path / "g3" / providers.TRT_CACHE_DIR).is_dir()
    assert providers.options_for(CUDA, slot_dir=tmp_path / "g4") == {}


def _with_providers(
    signer: Signer, model: bytes, prefs: tuple[t.ExecutionProvider, ...], *, version: str
) -> Release:
    base = signer.release(model, version=version)
    manifest = replace(base.manifest, providers=prefs)
    payload = wire.encode_manifest(manifest)
    env = signing.sign(payload, signing.MANIFEST_TYPE, signer.key)
    return Release(manifest, env, digests.of_bytes(payload), model)


@without_cuda
def test_a_release_preferring_gpus_serves_on_the_cpu_with_an_event(
    start_agent: StartAgent,
    watch: Callable[[str], Watcher],
    signer: Signer,
    artifacts: ArtifactServer,
    digits_model: TrainedModel,
) -> None:
    a = start_agent()
    w = watch(a.device_id)
    hello = w.wait_status(lambda s: s.hardware is not None, what="a status with hardware")
    assert hello.hardware is not None and hello.hardware.arch == platform.machine()
    assert hello.hardware.cores > 0 and "CPUExecutionProvider" in hello.hardware.providers
    assert hello.active_provider == ""

    release = _with_providers(signer, digits_model.onnx_bytes, GPU_FIRST, version="1.0.0")
    offer(w, signer, artifacts, release, 1)
    status = w.wait_status(active_on(release.ref), what="active on the CPU")
    assert status.active_provider == "CPUExecutionProvider"
    assert status.provider_fallback.startswith("running on CPUExecutionProvider: ")
    fallback = w.wait_event("provider_fallback")
    assert fallback.message == status.provider_fallback
    assert fallback.release == release.ref and fallback.phase is t.InstallPhase.HEALTH_CHECK
    assert "TensorrtExecutionProvider" in fallback.message
    assert "CUDAExecutionProvider" in fallback.message
    w.wait_event("activated")  # events come in order after the status: all of them by now
    kinds = w.kinds()
    # the health check ran on the session that serves: after the fallback, before activation
    assert kinds.index("provider_fallback") < kinds.index("health_check_passed")
    assert kinds.index("health_check_passed") < kinds.index("activated")

    url = f"http://127.0.0.1:{a.endpoints.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    assert 'provider="CPUExecutionProvider"' in text
    assert 'release="digits:1.0.0"' in text


def test_a_release_on_the_cpu_reports_no_fallback(
    start_agent: StartAgent,
    watch: Callable[[str], Watcher],
    signer: Signer,
    artifacts: ArtifactServer,
    digits_model: TrainedModel,
) -> None:
    a = start_agent()
    w = watch(a.device_id)
    release = _with_providers(signer, digits_model.onnx_bytes, (CPU,), version="1.0.0")
    offer(w, signer, artifacts, release, 1)
    status = w.wait_status(active_on(release.ref), what="active")
    assert status.active_provider == "CPUExecutionProvider"
    w.wait_event("activated")
    assert "provider_fallback" not in w.kinds()


@without_cuda
def test_a_restart_on_a_fallen_back_release_says_so_again(
    start_agent: StartAgent,
    watch: Callable[[str], Watcher],
    signer: Signer,
    artifacts: ArtifactServer,
    digits_model: TrainedModel,
) -> None:
    a = start_agent()
    w = watch(a.device_id)
    release = _with_providers(signer, digits_model.onnx_bytes, (CUDA, CPU), version="1.0.0")
    offer(w, signer, artifacts, release, 1)
    w.wait_status(active_on(release.ref), what="active")
    w.wait_event("provider_fallback")
    a.agent.stop()

    b = start_agent(device_id=a.device_id, data_dir=a.data_dir)
    wait_for(
        "a second provider_fallback, from the restart",
        lambda: w.kinds().count("provider_fallback") >= 2,
    )
    status = w.wait_status(
        lambda s: s.active_provider == "CPUExecutionProvider" and bool(s.provider_fallback),
        what="the restarted agent's status naming the fallback",
    )
    assert status.active_release == release.ref and b.endpoint
