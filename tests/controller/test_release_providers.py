"""A release's execution provider preference: checked, signed into the manifest, tamper-proof."""

from __future__ import annotations

import grpc
import pytest

from edgefleet.common import desired, signing
from edgefleet.common import types as t
from edgefleet.common.errors import SignatureError
from edgefleet.demo.digits import TrainedModel
from edgefleet.v1 import common_pb2
from edgefleet.v1 import controller_pb2 as pb
from tests.controller import support

TRT = common_pb2.ExecutionProvider(
    name="TensorrtExecutionProvider", options={"trt_fp16_enable": "1"}
)
CUDA = common_pb2.ExecutionProvider(name="CUDAExecutionProvider")
CPU = common_pb2.ExecutionProvider(name="CPUExecutionProvider")


def test_the_provider_preference_is_signed_in_the_manifest(
    ctl: support.Running, digits_model: TrainedModel
) -> None:
    ctl.stub.InitKey(pb.InitKeyRequest(), timeout=5)
    support.upload(ctl.stub, "digits", digits_model.onnx_bytes)
    info = ctl.stub.CreateRelease(
        pb.CreateReleaseRequest(name="digits", version="3.0.0", providers=[TRT, CUDA, CPU]),
        timeout=5,
    )
    assert list(info.manifest.providers) == [TRT, CUDA, CPU]

    signed = ctl.controller.releases.get(t.ReleaseRef("digits", "3.0.0")).signed_manifest
    trust = support.trust(ctl.stub)
    manifest, digest = desired.open_manifest(signed, trust)
    assert digest == info.manifest_digest
    assert manifest.providers == (
        t.ExecutionProvider("TensorrtExecutionProvider", {"trt_fp16_enable": "1"}),
        t.ExecutionProvider("CUDAExecutionProvider"),
        t.ExecutionProvider("CPUExecutionProvider"),
    )

    # whoever edits the preference in transit (say, to force the CPU) breaks the signature
    tampered = common_pb2.Manifest()
    tampered.ParseFromString(signed.payload)
    del tampered.providers[:2]
    forged = signing.Envelope(
        payload_type=signed.payload_type,
        payload=tampered.SerializeToString(deterministic=True),
        key_id=signed.key_id,
        signature=signed.signature,
    )
    with pytest.raises(SignatureError):
        desired.open_manifest(forged, trust)


def test_a_release_without_providers_names_none(
    ctl: support.Running, digits_model: TrainedModel
) -> None:
    ctl.stub.InitKey(pb.InitKeyRequest(), timeout=5)
    support.upload(ctl.stub, "digits", digits_model.onnx_bytes)
    info = ctl.stub.CreateRelease(
        pb.CreateReleaseRequest(name="digits", version="1.0.0"), timeout=5
    )
    assert list(info.manifest.providers) == []


@pytest.mark.parametrize(
    ("providers", "runtime", "match"),
    [
        ([common_pb2.ExecutionProvider(name="CUDA; rm -rf /")], "", "not a provider name"),
        ([CUDA, CUDA], "", "named twice"),
        ([CPU] * 9, "", "at most 8"),
        ([CUDA], "container", "onnxruntime only"),
        (
            [common_pb2.ExecutionProvider(name="CUDAExecutionProvider", options={"k": "v" * 300})],
            "",
            "at most 256",
        ),
    ],
)
def test_a_bad_preference_is_refused(
    ctl: support.Running,
    digits_model: TrainedModel,
    providers: list[common_pb2.ExecutionProvider],
    runtime: str,
    match: str,
) -> None:
    ctl.stub.InitKey(pb.InitKeyRequest(), timeout=5)
    support.upload(ctl.stub, "digits", digits_model.onnx_bytes)
    request = pb.CreateReleaseRequest(
        name="digits", version="1.0.0", providers=providers, runtime=runtime
    )
    with pytest.raises(grpc.RpcError) as info:
        ctl.stub.CreateRelease(request, timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert match in (info.value.details() or "")
