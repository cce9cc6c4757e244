"""A release's model variants: made from registered models, checked, signed into the manifest."""

from __future__ import annotations

import io

import grpc
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefleet.common import desired
from edgefleet.common import types as t
from edgefleet.common.artifacts import BlobStore
from edgefleet.demo.digits import DigitsData, TrainedModel
from edgefleet.v1 import common_pb2
from edgefleet.v1 import controller_pb2 as pb
from tests.controller import support

CUDA = common_pb2.ExecutionProvider(name="CUDAExecutionProvider")


def _rebuilt(model: bytes, tag: str) -> bytes:
    """``model`` with another doc string: other bytes, the same inputs and outputs."""
    proto = onnx.load_from_string(model)
    proto.doc_string = f"variant {tag}"
    return proto.SerializeToString()


def _scaled(model: bytes) -> bytes:
    """``model`` with its first weight halved: the same inputs and outputs, other answers."""
    proto = onnx.load_from_string(model)
    first = proto.graph.initializer[0]
    first.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(first) * 0.5, first.name))
    return proto.SerializeToString()


def _identity() -> bytes:
    """A model that takes and gives something else than the digits model."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "id", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _request(*variants: pb.VariantRequest) -> pb.CreateReleaseRequest:
    return pb.CreateReleaseRequest(name="digits", version="1.0.0", variants=list(variants))


def test_variants_are_made_from_registered_models_and_signed(
    ctl: support.Running, digits_model: TrainedModel
) -> None:
    ctl.stub.InitKey(pb.InitKeyRequest(), timeout=5)
    support.upload(ctl.stub, "digits", digits_model.onnx_bytes)
    fp16 = support.upload(ctl.stub, "digits-fp16", _rebuilt(digits_model.onnx_bytes, "fp16"))
    int8 = support.upload(ctl.stub, "digits-int8", _rebuilt(digits_model.onnx_bytes, "int8"))
    info = ctl.stub.CreateRelease(
        _request(
            pb.VariantRequest(
                name="fp16",
                model="digits-fp16",
                requires=["gpu", "provider:CUDAExecutionProvider"],
                providers=[CUDA],
            ),
            pb.VariantRequest(name="int8", model="digits-int8", requires=["cpu:vnni"]),
        ),
        timeout=5,
    )
    assert [v.name for v in info.manifest.variants] == ["fp16", "int8"]

    signed = ctl.controller.releases.get(t.ReleaseRef("digits", "1.0.0")).signed_manifest
    manifest, _ = desired.open_manifest(signed, support.trust(ctl.stub))
    assert manifest.variants == (
        t.Variant(
            "fp16",
            fp16.digest,
            fp16.size,
            providers=(t.ExecutionProvider("CUDAExecutionProvider"),),
            requires=("gpu", "provider:CUDAExecutionProvider"),
        ),
        t.Variant("int8", int8.digest, int8.size, requires=("cpu:vnni",)),
    )
    assert manifest.model_digest != fp16.digest  # the default stays the release's own model


@pytest.mark.parametrize(
    ("variant", "code", "match"),
    [
        (
            pb.VariantRequest(name="x", model="digits-int8", requires=["cpu:warp9"]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "unknown requirement 'cpu:warp9'",
        ),
        (
            pb.VariantRequest(name="x", model="digits-int8", requires=["npu"]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "unknown requirement 'npu'",
        ),
        (
            pb.VariantRequest(name="x", model="other", requires=["gpu"]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "inputs and outputs must match",
        ),
        (
            pb.VariantRequest(name="a b", model="digits-int8", requires=["gpu"]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "is not a name",
        ),
        (
            pb.VariantRequest(name="x", model="nowhere", requires=["gpu"]),
            grpc.StatusCode.NOT_FOUND,
            "nowhere",
        ),
    ],
)
def test_a_bad_variant_is_refused(
    ctl: support.Running,
    digits_model: TrainedModel,
    variant: pb.VariantRequest,
    code: grpc.StatusCode,
    match: str,
) -> None:
    ctl.stub.InitKey(pb.InitKeyRequest(), timeout=5)
    support.upload(ctl.stub, "digits", digits_model.onnx_bytes)
    support.upload(ctl.stub, "digits-int8", _rebuilt(digits_model.onnx_bytes, "int8"))
    support.upload(ctl.stub, "other", _identity())
    with pytest.raises(grpc.RpcError) as info:
        ctl.stub.CreateRelease(_request(variant), timeout=5)
    assert info.value.code() == code
    assert match in (info.value.details() or "")
    assert not ctl.controller.releases.list_releases("digits")


def test_two_variants_of_one_name_are_refused(
    ctl: support.Running, digits_model: TrainedModel
) -> None:
    ctl.stub.InitKey(pb.InitKeyRequest(), timeout=5)
    support.upload(ctl.stub, "digits", digits_model.onnx_bytes)
    v = pb.VariantRequest(name="x", model="digits", requires=["gpu"])
    with pytest.raises(grpc.RpcError) as info:
        ctl.stub.CreateRelease(_request(v, v), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "named twice" in (info.value.details() or "")


def test_each_variant_gets_golden_expectations_of_its_own(
    ctl: support.Running, digits_model: TrainedModel, digits_data: DigitsData
) -> None:
    ctl.stub.InitKey(pb.InitKeyRequest(), timeout=5)
    support.upload(ctl.stub, "digits", digits_model.onnx_bytes)
    support.upload(ctl.stub, "digits-other", _scaled(digits_model.onnx_bytes))
    buf = io.BytesIO()
    np.savez(buf, pixels=digits_data.x_test[:4])
    request = _request(pb.VariantRequest(name="other", model="digits-other", requires=["gpu"]))
    request.golden = buf.getvalue()
    info = ctl.stub.CreateRelease(request, timeout=30)
    [v] = info.manifest.variants
    assert v.golden_digest and v.golden_digest != info.manifest.golden_digest
    blobs = BlobStore(ctl.controller.settings.blobs_dir)

    def arrays(digest: str) -> dict[str, np.ndarray]:
        with np.load(io.BytesIO(blobs.read(digest)), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}

    own, release = arrays(v.golden_digest), arrays(info.manifest.golden_digest)
    assert v.golden_size == len(blobs.read(v.golden_digest))
    np.testing.assert_array_equal(own["input/pixels"], release["input/pixels"])
    assert not np.array_equal(own["expected/probabilities"], release["expected/probabilities"])
