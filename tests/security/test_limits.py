"""Limits end to end, each against real parts: an in-process agent with its real gRPC Predict
server, a real Mosquitto, real ONNX Runtime; real ArtifactService servers (and hostile ones,
real gRPC servers too) for downloads; the shipped broker config for message sizes.

Before these limits an agent served Predict calls of up to 64 MiB with no bound on how many at
once, downloaded whatever a source streamed past the signed size, failed a generation on the
first source whose bytes did not match, and wrote a download without asking for the space.
"""

# ruff: noqa: F811 - the agent tests' fixtures are imported by name and used as parameters

from __future__ import annotations

import io
import json
import lzma
import shutil
import struct
import threading
import tracemalloc
import zipfile
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import numpy.lib.format as npy
import pytest

from edgefleet.agent import fetching, goldenset
from edgefleet.common import digests, packing, topics, wire
from edgefleet.common import npz as npz_reader
from edgefleet.common import types as t
from edgefleet.common.errors import FetchError, IntegrityError, PermanentError
from edgefleet.demo.digits import DigitsData, TrainedModel
from edgefleet.v1 import artifact_pb2, artifact_pb2_grpc, inference_pb2, inference_pb2_grpc
from tests.agent import faults
from tests.agent.conftest import (  # noqa: F401 - the agent tests' fixtures, used below
    StartAgent,
    artifacts,
    signer,
    start_agent,
    watch,
)
from tests.agent.helpers import (
    ArtifactServer,
    Signer,
    Watcher,
    install,
    offer,
    predict,
    unique_id,
    wait_for,
)

P = t.InstallPhase


# --- Predict ---------------------------------------------------------------------------------


@dataclass
class HeldNeighbour(inference_pb2_grpc.InferenceServiceServicer):
    """A neighbour whose Predict holds every call until ``release`` is set."""

    release: threading.Event = field(default_factory=threading.Event)
    arrived: int = 0
    lock: threading.Condition = field(default_factory=threading.Condition)

    def Predict(
        self, request: inference_pb2.PredictRequest, context: grpc.ServicerContext
    ) -> inference_pb2.PredictResponse:
        with self.lock:
            self.arrived += 1
            self.lock.notify_all()
        self.release.wait(30)
        return inference_pb2.PredictResponse(device_id="held", release="digits:1.0.0")

    def wait_arrived(self, n: int) -> None:
        with self.lock:
            assert self.lock.wait_for(lambda: self.arrived >= n, 30), f"{self.arrived} arrived"


@pytest.fixture
def held() -> Iterator[tuple[HeldNeighbour, str]]:
    servicer = HeldNeighbour()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    servicer.release.set()
    server.stop(0).wait(5)


def _request(rows: np.ndarray) -> inference_pb2.PredictRequest:
    return inference_pb2.PredictRequest(inputs=[wire.array_to_pb("pixels", rows)])


def test_predict_beyond_max_concurrent_is_resource_exhausted(
    start_agent: StartAgent,
    watch: Callable[[str], Watcher],
    held: tuple[HeldNeighbour, str],
    digits_data: DigitsData,
) -> None:
    # the agent has no model, so it forwards each call to its one neighbour, which holds it:
    # the calls stay in flight on the agent for as long as the test wants, whatever the speed
    neighbour, endpoint = held
    fleet = unique_id("fleet")
    a = start_agent(fleet=fleet, predict_max_concurrent=2, failover_deadline=30.0)
    w = watch(a.device_id)
    presence = t.Presence("held", fleet, online=True, predict_endpoint=endpoint,
                          active_release="digits:1.0.0")  # fmt: skip
    w.client.publish(
        topics.presence(fleet, "held"),
        wire.presence_to_pb(presence).SerializeToString(),
        qos=1,
        retain=True,  # the agent may subscribe after this
    ).wait_for_publish(5)
    wait_for("the neighbour", lambda: any(n.online for n in a.agent.neighbours.snapshot()))
    rows = digits_data.x_test[:1]

    with grpc.insecure_channel(a.endpoint) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        pending = [stub.Predict.future(_request(rows), timeout=30) for _ in range(2)]
        neighbour.wait_arrived(2)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Predict(_request(rows), timeout=10)
        neighbour.release.set()
        replies = [p.result() for p in pending]
        after = stub.Predict(_request(rows), timeout=30)

    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limit of 2 concurrent Predict calls" in refused.value.details()
    assert [r.device_id for r in replies] == ["held", "held"]
    assert after.served_by_neighbour  # served again once the calls in flight ended
    w.client.publish(topics.presence(fleet, "held"), b"", qos=1, retain=True).wait_for_publish(5)


def test_predict_over_max_bytes_is_resource_exhausted(start_agent: StartAgent) -> None:
    a = start_agent(predict_max_bytes=1 << 20, failover=False)
    small = np.zeros((1, 64), np.float32)
    big = np.zeros((8192, 64), np.float32)  # 2 MiB

    with pytest.raises(grpc.RpcError) as too_big:
        predict(a.endpoint, {"pixels": big})
    with pytest.raises(grpc.RpcError) as fits:
        predict(a.endpoint, {"pixels": small})

    assert too_big.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert fits.value.code() is grpc.StatusCode.UNAVAILABLE  # no model yet: the size was fine


def test_input_errors_never_count_as_runtime_failures_in_the_health_window(
    start_agent: StartAgent,
    watch: Callable[[str], Watcher],
    signer: Signer,
    artifacts: ArtifactServer,
    digits_model: TrainedModel,
    digits_data: DigitsData,
) -> None:
    a = start_agent()
    w = watch(a.device_id)
    install(w, signer, artifacts, digits_model.onnx_bytes, version="1.0.0", generation=1)
    policy = t.HealthPolicy(health_window_s=60.0, max_load_failures=3)
    flaky = signer.release(faults.batch_of_one(digits_model.onnx_bytes), version="1.1.0",
                           health=policy)  # fmt: skip
    offer(w, signer, artifacts, flaky, 2)
    w.wait_status(
        lambda s: s.phase is P.HEALTH_CHECK and s.active_release == "digits:1.1.0",
        what="v1.1 in its health window",
    )
    bad_inputs = [
        {"image": digits_data.x_test[:1]},  # no such input
        {"pixels": digits_data.x_test[:1].astype(np.float64)},  # wrong dtype
        {"pixels": digits_data.x_test[:1, :10]},  # wrong shape
    ]
    for inputs in bad_inputs * 3:
        with pytest.raises(grpc.RpcError) as err:
            predict(a.endpoint, inputs)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    for _ in range(3):  # batches of two make this model fail inside ONNX Runtime
        with pytest.raises(grpc.RpcError) as err:
            predict(a.endpoint, {"pixels": digits_data.x_test[:2]})
        assert err.value.code() is grpc.StatusCode.INTERNAL

    event = w.wait_event("rolled_back", generation=2)
    # exactly the three runtime failures, the last of them ONNX Runtime's: none of the nine
    # refused inputs counted
    assert "the runtime failed 3 times" in event.message, event.message
    assert "Reshape" in event.message, event.message


# --- downloads -------------------------------------------------------------------------------


class HostileBlobs(artifact_pb2_grpc.ArtifactServiceServicer):
    """An ArtifactService that states the signed size and then serves ``body`` instead."""

    def __init__(self, size: int, body: bytes) -> None:
        self.size, self.body = size, body
        self.fetches = 0

    def Stat(
        self, request: artifact_pb2.StatRequest, context: grpc.ServicerContext
    ) -> artifact_pb2.BlobInfo:
        return artifact_pb2.BlobInfo(digest=request.digest, size=self.size)

    def Fetch(
        self, request: artifact_pb2.FetchRequest, context: grpc.ServicerContext
    ) -> Iterator[artifact_pb2.BlobChunk]:
        self.fetches += 1
        step = 64 * 1024
        for offset in range(request.offset, len(self.body), step):
            data = self.body[offset : offset + step]
            yield artifact_pb2.BlobChunk(offset=offset, data=data, total_size=self.size)


@dataclass
class Hostile:
    servicer: HostileBlobs
    address: str


@pytest.fixture
def hostile() -> Iterator[Callable[[int, bytes], Hostile]]:
    servers: list[grpc.Server] = []

    def make(size: int, body: bytes) -> Hostile:
        servicer = HostileBlobs(size, body)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        artifact_pb2_grpc.add_ArtifactServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return Hostile(servicer, f"127.0.0.1:{port}")

    yield make
    for server in servers:
        server.stop(0).wait(5)


def _download(sources: list[str], digest: str, partial: Path, *, size: int) -> list[int]:
    seen: list[int] = []
    fetching.download(
        sources, digest, partial, size=size, deadline_s=30.0, stopping=threading.Event(),
        on_bytes=seen.append,
    )  # fmt: skip
    return seen


def test_a_source_streaming_past_the_signed_size_is_cut_off(
    tmp_path: Path, hostile: Callable[[int, bytes], Hostile], digits_model: TrainedModel
) -> None:
    model = digits_model.onnx_bytes
    endless = hostile(len(model), model + b"\0" * (16 << 20))  # 16 MiB past the signed size
    partial = tmp_path / "partial" / "model"
    seen: list[int] = []

    with pytest.raises(IntegrityError, match="past the blob's size") as cut:
        fetching.download(
            [endless.address], digests.of_bytes(model), partial, size=len(model),
            deadline_s=30.0, stopping=threading.Event(), on_bytes=seen.append,
        )  # fmt: skip

    assert endless.address in str(cut.value)
    assert sum(seen) <= len(model), "no byte past the signed size was written"
    assert not partial.exists(), "the partial file is discarded"


def test_a_source_lying_about_the_bytes_is_skipped_for_the_next(
    tmp_path: Path,
    hostile: Callable[[int, bytes], Hostile],
    artifacts: ArtifactServer,
    digits_model: TrainedModel,
) -> None:
    model = digits_model.onnx_bytes
    tampered = bytearray(model)
    tampered[-10] ^= 0xFF  # the signed size, other bytes
    liar = hostile(len(model), bytes(tampered))
    digest = artifacts.put(model)
    partial = tmp_path / "partial" / "model"

    _download([liar.address, artifacts.address], digest, partial, size=len(model))

    assert liar.servicer.fetches == 1
    assert [d for d, _ in artifacts.fetches] == [digest]
    assert partial.read_bytes() == model


def test_a_resumed_download_that_does_not_match_is_fetched_whole_again(
    tmp_path: Path, artifacts: ArtifactServer, digits_model: TrainedModel
) -> None:
    model = digits_model.onnx_bytes
    digest = artifacts.put(model)
    partial = tmp_path / "partial" / "model"
    partial.parent.mkdir()
    partial.write_bytes(b"\xff" * 1000)  # left by another source, which lied

    _download([artifacts.address], digest, partial, size=len(model))

    assert artifacts.fetches == [(digest, 1000), (digest, 0)]
    assert partial.read_bytes() == model


def test_when_every_source_lies_the_install_fails_and_keeps_the_last_good_model(
    start_agent: StartAgent,
    watch: Callable[[str], Watcher],
    signer: Signer,
    artifacts: ArtifactServer,
    hostile: Callable[[int, bytes], Hostile],
    digits_model: TrainedModel,
    digits_model_v2: TrainedModel,
    digits_data: DigitsData,
) -> None:
    a = start_agent()
    w = watch(a.device_id)
    install(w, signer, artifacts, digits_model.onnx_bytes, version="1.0.0", generation=1)
    good = digits_model_v2.onnx_bytes
    liar = hostile(len(good), good[::-1])
    release = signer.release(good, version="2.0.0")  # the controller does not have it either

    w.publish_desired(
        signer.desired(release, device_id=a.device_id, generation=2, sources=[liar.address])
    )

    failed = w.wait_event("install_failed", generation=2)
    assert "IntegrityError" in failed.message and liar.address in failed.message
    assert predict(a.endpoint, {"pixels": digits_data.x_test[:1]}).release == "digits:1.0.0"


def test_a_lying_first_source_does_not_burn_the_generation(
    start_agent: StartAgent,
    watch: Callable[[str], Watcher],
    signer: Signer,
    artifacts: ArtifactServer,
    hostile: Callable[[int, bytes], Hostile],
    digits_model: TrainedModel,
    digits_data: DigitsData,
) -> None:
    a = start_agent()  # its controller (``artifacts``) is the source after the desired state's
    w = watch(a.device_id)
    model = digits_model.onnx_bytes
    liar = hostile(len(model), model[::-1])
    release = signer.release(model, version="1.0.0")
    artifacts.publish(release)

    w.publish_desired(
        signer.desired(release, device_id=a.device_id, generation=1, sources=[liar.address])
    )

    w.wait_status(
        lambda s: s.phase is P.ACTIVE and s.active_release == "digits:1.0.0", what="active"
    )
    assert liar.servicer.fetches == 1
    assert predict(a.endpoint, {"pixels": digits_data.x_test[:1]}).release == "digits:1.0.0"


def test_a_download_that_does_not_fit_on_disk_says_so_before_fetching(
    tmp_path: Path, artifacts: ArtifactServer
) -> None:
    digest = artifacts.put(b"x" * 1000)
    partial = tmp_path / "partial" / "model"
    partial.parent.mkdir()
    usage = shutil.disk_usage(partial.parent)

    with pytest.raises(FetchError) as no_room:
        _download([artifacts.address], digest, partial, size=usage.free + (1 << 20))
    with pytest.raises(PermanentError, match="more than the whole file system"):
        _download([artifacts.address], digest, partial, size=usage.total + 1)

    assert "bytes needed" in no_room.value.reason and "free" in no_room.value.reason
    assert artifacts.fetches == [], "nothing was fetched"


# --- decoding packed models and golden data ---------------------------------------------------


def _container(header: dict[str, object], payload: bytes) -> bytes:
    head = json.dumps(header).encode()
    return packing.MAGIC + bytes([packing.VERSION]) + struct.pack("<I", len(head)) + head + payload


def _bomb(size: int) -> bytes:
    """LZMA data that decompresses to ``size`` zero bytes (a few hundred KiB of it)."""
    compressor = lzma.LZMACompressor()
    zeros = bytes(1 << 20)
    parts = [compressor.compress(zeros) for _ in range(size >> 20)]
    return b"".join([*parts, compressor.flush()])


def test_a_packed_model_whose_skeleton_inflates_past_its_size_is_refused_early() -> None:
    bomb = _bomb(256 << 20)
    container = _container(
        {"size": 1000, "sha256": "0" * 64, "skeleton": len(bomb), "tensors": []}, bomb
    )

    tracemalloc.start()
    try:
        with pytest.raises(packing.PackingError, match="does not decompress to the 1000 bytes"):
            packing.decode(container)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < 16 << 20, f"{peak} bytes allocated to refuse it"


@pytest.mark.parametrize(
    ("header", "match"),
    [
        ({"size": 1 << 40, "skeleton": 0, "tensors": []}, "over the limit"),
        ({"size": 100, "skeleton": 1 << 30, "tensors": []}, "skeleton of 1073741824 bytes"),
        (
            {"size": 100, "skeleton": 0, "tensors": [
                {"offset": 0, "dtype": "<f4", "count": 10**12, "symbols": 2, "bits": 10**12}
            ]},
            "do not fit the model",
        ),
        (
            {"size": 10**9, "skeleton": 0, "tensors": [
                {"offset": 0, "dtype": "<f4", "count": 10**6, "symbols": 2, "bits": 10**6}
            ]},
            "past the end of the container",
        ),
    ],
)  # fmt: skip
def test_a_packed_model_declaring_what_it_cannot_hold_is_refused(
    header: dict[str, object], match: str
) -> None:
    with pytest.raises(packing.PackingError, match=match):
        packing.decode(_container({"sha256": "0" * 64, **header}, b"\0" * 64))


def _npz_with_header(shape: tuple[int, ...], body: bytes) -> bytes:
    """An .npz whose one member's .npy header declares ``shape`` float64 before ``body``."""
    npy_file = io.BytesIO()
    npy.write_array_header_1_0(
        npy_file, {"descr": "<f8", "fortran_order": False, "shape": shape}
    )  # fmt: skip
    npy_file.write(body)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("input/pixels.npy", npy_file.getvalue())
    return out.getvalue()


def test_golden_data_declaring_a_huge_array_is_refused_before_allocating() -> None:
    data = _npz_with_header((1 << 40,), b"\0" * 64)  # 8 TiB declared, 64 bytes held

    with pytest.raises(goldenset.GoldenDataError, match="declares") as refused:
        goldenset.parse(data)

    assert "[1099511627776]" in str(refused.value)


def test_golden_data_over_the_size_bound_is_refused() -> None:
    rows = np.zeros((1024, 64), np.float32)
    buf = io.BytesIO()
    np.savez(buf, **{"input/pixels": rows})

    with pytest.raises(npz_reader.NpzError, match="at most 65536"):
        npz_reader.read(buf.getvalue(), max_bytes=65536)
    assert npz_reader.read(buf.getvalue())["input/pixels"].shape == (1024, 64)
