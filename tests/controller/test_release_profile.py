"""``release create --profile-on DEVICE`` against a real controller and a real agent: the
default model and each variant that fits the device's reported hardware are timed through the
agent's Benchmark, and the fastest is signed as the preference of the device's hardware class
(``Manifest.preferences``), which devices of that class then run. Models made here with
``onnx.helper``, run by the agent's ONNX Runtime."""

from __future__ import annotations

import platform
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from edgefleet.agent import hardware as probing
from edgefleet.agent import variants as agent_variants
from edgefleet.common import hwclass, signing, wire
from edgefleet.common import types as t
from edgefleet.controller.benchmarking import DeviceTimer
from edgefleet.v1 import common_pb2, inference_pb2
from edgefleet.v1 import controller_pb2 as pb
from tests import tinymodels
from tests.conftest import Broker
from tests.controller import support
from tests.controller.test_compressed_release import real_agent

DEADLINE = 120.0
ARCH = platform.machine()


def _model(scale: float, *, depth: int = 1) -> bytes:
    return tinymodels.matmul_chain(8, scale=scale, depth=depth)


def _register(ctl: support.Running, name: str, data: bytes) -> str:
    support.upload(ctl.stub, name, data)
    return name


def _create(ctl: support.Running, **fields: object) -> pb.ReleaseInfo:
    request = pb.CreateReleaseRequest(**fields)  # type: ignore[arg-type]
    info: pb.ReleaseInfo = ctl.stub.CreateRelease(request, timeout=DEADLINE)
    return info


def test_the_fastest_fitting_candidate_is_signed_for_the_device_class(
    ctl: support.Running, broker: Broker, tmp_path: Path
) -> None:
    hw = probing.probe()
    if hw.gpus or "TensorrtExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has a GPU or TensorRT: the test's classes need neither")
    base = support.unique("prof")
    name = _register(ctl, base, _model(1.0))
    deep = _register(ctl, f"{base}-deep", _model(1.0, depth=6))
    wide = _register(ctl, f"{base}-same", _model(1.0))
    gpu = _register(ctl, f"{base}-gpu", _model(1.0))
    fleet = support.unique("fleet")
    with real_agent(ctl, broker, tmp_path, fleet=fleet) as (agent, _endpoint):
        info = _create(
            ctl,
            name=name,
            version="1.0.0",
            variants=[
                pb.VariantRequest(name="gpu", model=gpu, requires=["gpu"]),
                pb.VariantRequest(name="deep", model=deep, requires=[f"arch:{ARCH}"]),
                pb.VariantRequest(
                    name="same",
                    model=wide,
                    requires=[f"arch:{ARCH}"],
                    # not offered here (skipped otherwise): timed on the CPU it falls back to
                    providers=[
                        common_pb2.ExecutionProvider(name="TensorrtExecutionProvider"),
                        common_pb2.ExecutionProvider(name="CPUExecutionProvider"),
                    ],
                ),
            ],
            profile_on=[agent.device_id],
        )
    manifest = wire.manifest_from_pb(info.manifest)
    (pref,) = manifest.preferences
    assert pref.arch == ARCH and pref.measured_on == agent.device_id
    assert pref.holds == (f"arch:{ARCH}",)  # gpu does not hold here: not part of the class
    timed = {x.variant: x for x in pref.timings}
    assert set(timed) == {"", "deep", "same"}  # the gpu variant does not fit: not timed
    assert all(x.p50_ms > 0 and x.providers == "CPUExecutionProvider" for x in timed.values())
    assert pref.variant == min(timed, key=lambda n: timed[n].p50_ms)  # the fastest measured
    # signed: the manifest the controller signed carries it, and the device of that class
    # resolves it to the preferred model
    envelope = wire.envelope_from_pb(info.signed_manifest)
    assert wire.decode_manifest(envelope.payload).preferences == manifest.preferences
    chosen = agent_variants.choose(manifest, hw)
    assert (chosen.name if chosen is not None else "") == pref.variant
    # another class (with a GPU) is not this one's: first fit there
    with_gpu = t.Hardware(ARCH, gpus=(t.Gpu("test"),))
    picked = hwclass.choose(manifest, with_gpu)
    assert picked is not None and picked.name == "gpu"


def test_profile_on_needs_variants_and_a_known_device(ctl: support.Running) -> None:
    ctl.stub.InitKey(pb.InitKeyRequest(), timeout=DEADLINE)
    name = _register(ctl, support.unique("prof"), _model(1.0))
    other = _register(ctl, support.unique("prof"), _model(2.0))
    with pytest.raises(grpc.RpcError) as no_variants:
        _create(ctl, name=name, version="1.0.0", profile_on=["dev-x"])
    assert no_variants.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "give --variant" in str(no_variants.value.details())
    with pytest.raises(grpc.RpcError) as unknown:
        _create(
            ctl,
            name=name,
            version="1.0.1",
            variants=[pb.VariantRequest(name="v", model=other)],
            profile_on=["no-such-device"],
        )
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-device" in str(unknown.value.details())
    # nothing was released
    releases = ctl.stub.ListReleases(pb.ListReleasesRequest(name=name), timeout=DEADLINE)
    assert list(releases.releases) == []


def test_the_benchmark_spec_names_the_providers() -> None:
    key = signing.generate()
    timer = DeviceTimer("d1", "127.0.0.1:1", lambda p: signing.sign(p, signing.BENCHMARK_TYPE, key))
    request = timer.request(
        _model(1.0),
        {"x": np.ones((1, 8), np.float32)},
        threads=0,
        providers=(t.ExecutionProvider("CUDAExecutionProvider", {"device_id": "0"}),),
    )
    payload = signing.TrustStore([key.public_key()]).verify(
        wire.envelope_from_pb(request.spec), expected_type=signing.BENCHMARK_TYPE
    )
    spec = inference_pb2.BenchmarkSpec.FromString(payload)
    assert [(p.name, dict(p.options)) for p in spec.providers] == [
        ("CUDAExecutionProvider", {"device_id": "0"})
    ]
