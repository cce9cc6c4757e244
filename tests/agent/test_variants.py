"""Model variants per hardware class: a real agent runs the first variant its hardware meets.

The release's default is the digits model; the variants are the same graph with another
``doc_string`` (other bytes, other digest, the same signature), so which one a device runs
shows in the blob it fetched and in the ``active_variant`` of its status.
"""

from __future__ import annotations

import dataclasses
import platform
from collections.abc import Callable

import onnx
import pytest

from edgefleet.agent import variants
from edgefleet.common import desired, digests, signing, wire
from edgefleet.common import types as t
from edgefleet.common.errors import MalformedMessageError, SignatureError
from edgefleet.demo.digits import DigitsData, TrainedModel
from tests.agent.conftest import StartAgent
from tests.agent.helpers import (
    ArtifactServer,
    Release,
    Signer,
    Watcher,
    active_on,
    offer,
    predict,
)

CUDA_HW = t.Hardware(
    arch="aarch64",
    cpu_features=("dotprod", "fp16"),
    gpus=(t.Gpu("Orin"),),
    providers=("CUDAExecutionProvider", "CPUExecutionProvider"),
)
PI_HW = t.Hardware(arch="aarch64", cpu_features=("dotprod",), providers=("CPUExecutionProvider",))


def _variant(name: str, model: bytes, *requires: str) -> t.Variant:
    return t.Variant(name, digests.of_bytes(model), len(model), requires=tuple(requires))


def _rebuilt(model: bytes, tag: str) -> bytes:
    """``model`` with another doc string: other bytes, the same graph."""
    proto = onnx.load_from_string(model)
    proto.doc_string = f"variant {tag}"
    return proto.SerializeToString()


def _with_variants(
    signer: Signer, model: bytes, vs: tuple[t.Variant, ...], *, version: str
) -> Release:
    base = signer.release(model, version=version)
    manifest = dataclasses.replace(base.manifest, variants=vs)
    payload = wire.encode_manifest(manifest)
    env = signing.sign(payload, signing.MANIFEST_TYPE, signer.key)
    return Release(manifest, env, digests.of_bytes(payload), model)


def test_the_first_variant_whose_requirements_all_hold_is_chosen() -> None:
    fp16 = _variant("fp16", b"a", "gpu", "provider:CUDAExecutionProvider")
    int8 = _variant("int8", b"b", "cpu:dotprod", "arch:aarch64")
    m = t.Manifest("m", "1.0.0", "sha256:00", 1, (), (), variants=(fp16, int8))
    assert variants.choose(m, CUDA_HW) == fp16
    assert variants.choose(m, PI_HW) == int8
    assert variants.choose(m, t.Hardware(arch="x86_64", cpu_features=("vnni",))) is None
    assert not variants.holds("npu:hailo8", CUDA_HW)  # a form this agent does not know


def test_a_chosen_variant_replaces_the_model_and_providers() -> None:
    cpu = (t.ExecutionProvider("CPUExecutionProvider"),)
    v = dataclasses.replace(
        _variant("int8", b"int8", "cpu:dotprod"),
        providers=cpu,
        golden_digest="sha256:33",
        golden_size=3,
    )
    m = t.Manifest(
        "m",
        "1.0.0",
        "sha256:00",
        1,
        (),
        (),
        model_encoding="efpk",
        model_chunks=(t.Chunk("sha256:22", 1),),
        annotations={"decoded_model_digest": "sha256:11", "notes": "n"},
        variants=(v,),
    )
    r = variants.resolve(m, PI_HW)
    assert (r.model_digest, r.model_size, r.model_encoding) == (v.model_digest, 4, "")
    assert r.providers == cpu and r.variant == "int8" and r.model_chunks == ()
    assert (r.golden_digest, r.golden_size) == ("sha256:33", 3)  # its own expectations
    assert dict(r.annotations) == {"notes": "n"}  # the default's decoded digest is not its own
    assert variants.resolve(m, t.Hardware(arch="x86_64")) == m


def test_variants_round_trip_and_bad_ones_are_refused() -> None:
    v = _variant("int8", b"x", "cpu:vnni", "arch:x86_64")
    m = t.Manifest("m", "1.0.0", "sha256:00", 1, (t.TensorSpec("x", "float32", (1,)),), ())
    good = dataclasses.replace(m, variants=(v,))
    assert wire.decode_manifest(wire.encode_manifest(good)).variants == (v,)
    for bad in (
        dataclasses.replace(v, requires=("cpu vnni",)),
        dataclasses.replace(v, name="a b"),
        dataclasses.replace(v, model_digest="md5:00"),
    ):
        with pytest.raises(MalformedMessageError):
            wire.decode_manifest(wire.encode_manifest(dataclasses.replace(m, variants=(bad,))))


def test_a_tampered_variant_fails_the_signature(signer: Signer, digits_model: TrainedModel) -> None:
    model = digits_model.onnx_bytes
    v = _variant("int8", model, "arch:aarch64")
    release = _with_variants(signer, model, (v,), version="1.0.0")
    trust = signing.TrustStore([signer.key.public_key()])
    assert desired.open_manifest(release.signed_manifest, trust)[0].variants == (v,)
    other = dataclasses.replace(v, requires=(f"arch:{platform.machine()}",))
    forged = wire.encode_manifest(dataclasses.replace(release.manifest, variants=(other,)))
    with pytest.raises(SignatureError):
        desired.open_manifest(dataclasses.replace(release.signed_manifest, payload=forged), trust)


def test_the_agent_runs_the_variant_its_hardware_fits_and_says_so(
    start_agent: StartAgent,
    watch: Callable[[str], Watcher],
    signer: Signer,
    artifacts: ArtifactServer,
    digits_model: TrainedModel,
    digits_data: DigitsData,
) -> None:
    a = start_agent()
    w = watch(a.device_id)
    default = digits_model.onnx_bytes
    trt_model, native_model = _rebuilt(default, "trt"), _rebuilt(default, "native")
    trt = _variant("trt-fp16", trt_model, "provider:TensorrtExecutionProvider", "gpu")
    native = _variant("native", native_model, f"arch:{platform.machine()}")
    release = _with_variants(signer, default, (trt, native), version="1.0.0")
    for blob in (trt_model, native_model):
        artifacts.put(blob)
    offer(w, signer, artifacts, release, 1)

    status = w.wait_status(active_on(release.ref), what="active on the native variant")
    assert status.active_variant == "native"
    assert status.active_manifest_digest == release.manifest_digest
    fetched = {d for d, _ in artifacts.fetches}
    assert native.model_digest in fetched
    assert not {trt.model_digest, digests.of_bytes(default)} & fetched
    assert (a.data_dir / "slots" / "g1" / "model.onnx").read_bytes() == native_model

    # restarted, the agent verifies the slot against the same variant and still names it
    a.agent.stop()
    b = start_agent(device_id=a.device_id, data_dir=a.data_dir)
    again = w.wait_status(
        lambda s: s.seq > status.seq and active_on(release.ref)(s), what="active after restart"
    )
    assert again.active_variant == "native"
    assert predict(b.endpoint, {"pixels": digits_data.x_test[:1]}).release == release.ref

    # a release without variants runs its one model and reports no variant
    plain = signer.release(default, version="2.0.0")
    offer(w, signer, artifacts, plain, 2)
    status = w.wait_status(active_on(plain.ref), what="active on 2.0.0")
    assert status.active_variant == ""


def test_a_variant_with_a_wrong_digest_is_refused_before_activation(
    start_agent: StartAgent,
    watch: Callable[[str], Watcher],
    signer: Signer,
    artifacts: ArtifactServer,
    digits_model: TrainedModel,
) -> None:
    a = start_agent()
    w = watch(a.device_id)
    default = digits_model.onnx_bytes
    native_model = _rebuilt(default, "native")
    native = _variant("native", native_model, f"arch:{platform.machine()}")
    release = _with_variants(signer, default, (native,), version="1.0.0")
    artifacts.put_as(native.model_digest, _rebuilt(default, "forged"))
    offer(w, signer, artifacts, release, 1)

    failed = w.wait_event("install_failed", generation=1)
    assert "IntegrityError" in failed.message and "digest mismatch" in failed.message
    status = w.wait_status(lambda s: s.phase is t.InstallPhase.FAILED, what="failed")
    assert status.active_release == "" and status.active_variant == ""
    assert "activated" not in w.kinds()
