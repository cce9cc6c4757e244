"""UploadModel / ListModels over a real gRPC server."""

from __future__ import annotations

from pathlib import Path

import grpc

from edgefleet.demo.digits import TrainedModel
from edgefleet.v1 import controller_pb2 as pb
from tests.conftest import Broker
from tests.controller import support


def test_upload_records_the_signature_and_lists_it(
    ctl: support.Running, digits_model: TrainedModel
) -> None:
    model = support.upload(ctl.stub, "digits", digits_model.onnx_bytes)

    assert (model.name, model.version, model.size) == ("digits", 1, len(digits_model.onnx_bytes))
    assert model.digest.startswith("sha256:")
    assert model.opset == 17
    assert [(s.name, s.dtype, list(s.shape)) for s in model.inputs] == [
        ("pixels", "float32", [-1, 64])
    ]
    assert [(s.name, s.dtype, list(s.shape)) for s in model.outputs] == [
        ("probabilities", "float32", [-1, 10]),
        ("label", "int64", [-1]),
    ]
    listed = ctl.stub.ListModels(pb.ListModelsRequest(), timeout=5).models
    assert list(listed) == [model]


def test_versions_count_up_and_the_same_bytes_return_the_newest(
    ctl: support.Running, digits_model: TrainedModel, digits_model_v2: TrainedModel
) -> None:
    v1 = support.upload(ctl.stub, "digits", digits_model.onnx_bytes)
    again = support.upload(ctl.stub, "digits", digits_model.onnx_bytes)
    v2 = support.upload(ctl.stub, "digits", digits_model_v2.onnx_bytes)
    other = support.upload(ctl.stub, "other", digits_model.onnx_bytes)

    assert (v1.version, again.version, v2.version, other.version) == (1, 1, 2, 1)
    assert again == v1
    listed = ctl.stub.ListModels(pb.ListModelsRequest(name="digits"), timeout=5).models
    assert [m.version for m in listed] == [1, 2]


def test_a_file_that_is_not_onnx_is_invalid_argument(ctl: support.Running) -> None:
    err = support.rpc_error(lambda: support.upload(ctl.stub, "junk", b"certainly not a model"))

    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith("not an ONNX model: ")
    assert not ctl.stub.ListModels(pb.ListModelsRequest(), timeout=5).models


def test_bad_streams_are_refused(ctl: support.Running, digits_model: TrainedModel) -> None:
    chunk_first = support.rpc_error(
        lambda: ctl.stub.UploadModel(iter([pb.UploadModelRequest(chunk=b"x")]), timeout=5)
    )
    bad_name = support.rpc_error(lambda: support.upload(ctl.stub, "Bad/Name", b"x"))
    short = support.rpc_error(
        lambda: ctl.stub.UploadModel(
            iter(
                [
                    pb.UploadModelRequest(header=pb.UploadHeader(name="digits", size=10_000)),
                    pb.UploadModelRequest(chunk=digits_model.onnx_bytes[:100]),
                ]
            ),
            timeout=5,
        )
    )

    for err in (chunk_first, bad_name, short):
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "header" in chunk_first.details()
    assert "invalid model name" in bad_name.details()
    assert "100 bytes of the 10000 declared" in short.details()


def test_uploads_over_the_size_limit_are_refused(
    tmp_path: Path, broker: Broker, digits_model: TrainedModel
) -> None:
    running = support.start(support.settings(tmp_path, broker.url, max_model_bytes=1000))
    try:
        err = support.rpc_error(
            lambda: support.upload(running.stub, "big", digits_model.onnx_bytes)
        )
    finally:
        running.stop()

    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "larger than the limit of 1000" in err.details()
