"""The fast local path: Predict over the agent's Unix socket, large inputs in shared memory.

A real ``edge-agent run`` process serves the digits model; the tests call it over TCP and over
its socket (``DATA_DIR/predict.sock``) and compare bytes, stage inputs in ``/dev/shm`` through
``sharedmem`` and ``FailoverClient``, and send the requests the agent must refuse.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from edgefleet.agent.client import FailoverClient
from edgefleet.agent.serving import SOCKET_MODE
from edgefleet.common import sharedmem, wire
from edgefleet.common.errors import InvalidInputError
from edgefleet.demo.digits import DigitsData, TrainedModel
from edgefleet.edgectl.inference import InferenceClient
from edgefleet.v1 import inference_pb2, inference_pb2_grpc
from tests.agent.conftest import StartAgent
from tests.agent.helpers import (
    AgentProcess,
    ArtifactServer,
    Signer,
    outputs,
    predict_request,
    serving_v1,
    unique_id,
)
from tests.conftest import Broker

pytestmark = pytest.mark.skipif(not sharedmem.available(), reason="no writable /dev/shm here")


class LocalAgent:
    def __init__(self, proc: AgentProcess, info: dict[str, object]) -> None:
        self.proc = proc
        self.tcp = str(info["predict_endpoint"])
        self.unix = str(info["predict_socket"])
        self.socket = proc.data_dir / "predict.sock"


@pytest.fixture
def local_agent(
    broker: Broker,
    short_dir: Path,
    signer: Signer,
    artifacts: ArtifactServer,
    digits_model: TrainedModel,
) -> Iterator[LocalAgent]:
    device_id = unique_id()
    proc = AgentProcess(
        device_id=device_id,
        data_dir=short_dir / device_id,
        broker_url=broker.url,
        controller=artifacts.address,
        key_file=signer.key_file,
    )
    with serving_v1(
        proc, signer, artifacts, digits_model.onnx_bytes, broker_url=broker.url
    ) as info:
        yield LocalAgent(proc, info)


def inline(x: np.ndarray) -> inference_pb2.PredictRequest:
    return inference_pb2.PredictRequest(inputs=[wire.array_to_pb("pixels", x)])


def leftover_regions() -> list[str]:
    return [p.name for p in sharedmem.SHM_ROOT.glob(f"edgefleet-{os.getpid()}-*")]


def test_the_socket_serves_what_tcp_serves_bit_for_bit(
    local_agent: LocalAgent, digits_data: DigitsData
) -> None:
    a = local_agent
    info = a.socket.lstat()
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == SOCKET_MODE == 0o660
    assert a.unix == f"unix:{a.socket}"
    assert f"socket={a.unix}" in a.proc.output()  # the ready line

    x = digits_data.x_test[:300]  # 76 800 bytes: over the default shared-memory threshold
    over_tcp = predict_request(a.tcp, inline(x))
    over_unix = predict_request(a.unix, inline(x))
    assert over_unix.device_id == over_tcp.device_id == a.proc.device_id
    assert over_unix.release == over_tcp.release == "digits:1.0.0"
    assert outputs(over_unix) == outputs(over_tcp)

    stager = sharedmem.Stager()
    with stager.request({"pixels": x}) as request:
        assert not request.inputs and request.shared_inputs[0].region.startswith("edgefleet-")
        via_shm = predict_request(a.unix, request)
    assert outputs(via_shm) == outputs(over_tcp)
    stager.close()

    with FailoverClient(a.tcp, local_socket=a.socket) as client:  # the app's way
        assert client.endpoint == a.unix
        assert outputs(client.predict({"pixels": x})) == outputs(over_tcp)
        small = client.predict({"pixels": x[:2]}, output_names=["label"])  # inline
        assert [t.name for t in small.outputs] == ["label"]
    with InferenceClient(a.unix, shm_threshold=0) as edgectl:
        got = edgectl.predict({"pixels": x})
    assert got.outputs["label"].tobytes() == outputs(over_tcp)["label"][2]
    assert leftover_regions() == []  # every region of this process was unlinked


def _region(data: bytes) -> sharedmem.Region:
    region = sharedmem.Region(len(data))
    region.put("raw", np.frombuffer(data, np.uint8))
    return region


def test_bad_shared_inputs_get_invalid_argument_and_the_agent_serves_on(
    local_agent: LocalAgent, digits_data: DigitsData
) -> None:
    a = local_agent
    x = np.ascontiguousarray(digits_data.x_test[:4])
    region = _region(x.tobytes())
    link = sharedmem.SHM_ROOT / f"edgefleet-{os.getpid()}-link"
    link.symlink_to(region.path)
    good = dict(name="pixels", dtype="float32", shape=[4, 64], region=region.name, byte_size=1024)

    def shared(**change: object) -> inference_pb2.PredictRequest:
        fields = {**good, **change}
        return inference_pb2.PredictRequest(
            shared_inputs=[inference_pb2.SharedTensor(**fields)]  # type: ignore[arg-type]
        )

    cases: list[tuple[str, str, inference_pb2.PredictRequest]] = [
        ("traversal", "not a region name", shared(region="../../etc/passwd")),
        ("a path", "not a region name", shared(region="/tmp/x")),
        ("dot-dot", "not a region name", shared(region="..")),
        ("missing", "does not exist", shared(region=f"edgefleet-{os.getpid()}-gone")),
        ("a symlink", "cannot be opened", shared(region=link.name)),
        ("out of bounds", "beyond its", shared(offset=64)),
        ("size mismatch", "needs 1024 bytes, the request says 1020", shared(byte_size=1020)),
        ("shape mismatch", "needs 1280 bytes", shared(shape=[5, 64])),
        ("negative dim", "negative dimension", shared(shape=[-4, -64])),
        ("bad dtype", "is not numeric", shared(dtype="str")),
        ("wrong dtype for the model", "expected dtype float32", shared(dtype="int32")),
        (
            "named twice",
            "given more than once",
            inference_pb2.PredictRequest(
                inputs=[wire.array_to_pb("pixels", x)], shared_inputs=shared().shared_inputs
            ),
        ),
    ]
    try:
        assert outputs(predict_request(a.unix, shared())) == outputs(
            predict_request(a.tcp, inline(x))
        )
        for what, message, request in cases:
            with pytest.raises(grpc.RpcError) as err:
                predict_request(a.unix, request)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, what
            assert message in (err.value.details() or ""), (what, err.value.details())
        with pytest.raises(grpc.RpcError) as err:  # shared memory over TCP: never
            predict_request(a.tcp, shared())
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "only over the agent's Unix socket" in (err.value.details() or "")
        assert outputs(predict_request(a.unix, shared())) == outputs(
            predict_request(a.tcp, inline(x))
        )
    finally:
        link.unlink()
        region.close()


def test_a_killed_agents_socket_does_not_stop_the_next(
    broker: Broker, short_dir: Path, signer: Signer, artifacts: ArtifactServer
) -> None:
    device_id = unique_id()
    proc = AgentProcess(
        device_id=device_id,
        data_dir=short_dir / device_id,
        broker_url=broker.url,
        controller=artifacts.address,
        key_file=signer.key_file,
    )
    try:
        first = proc.start()
        proc.kill()  # SIGKILL: the socket file stays behind
        assert (proc.data_dir / "predict.sock").exists()
        second = proc.start()
        assert second["predict_socket"] == first["predict_socket"]
        with grpc.insecure_channel(str(second["predict_socket"])) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            info = stub.ModelInfo(inference_pb2.ModelInfoRequest(), timeout=10)
        assert info.device_id == device_id
    finally:
        proc.kill()


def test_the_socket_can_be_moved(start_agent: StartAgent, short_dir: Path) -> None:
    moved = short_dir / "apps.sock"
    a = start_agent(data_dir=short_dir / "d1", predict_socket=str(moved))
    assert a.endpoints.socket == f"unix:{moved}" and moved.is_socket()


def test_the_socket_can_be_turned_off(start_agent: StartAgent, short_dir: Path) -> None:
    off = start_agent(data_dir=short_dir / "d2", predict_socket="")
    assert off.endpoints.socket is None and not (short_dir / "d2" / "predict.sock").exists()


def test_the_default_socket_is_skipped_where_its_path_is_too_long(
    start_agent: StartAgent, tmp_path: Path
) -> None:
    skipped = start_agent(data_dir=tmp_path / ("x" * 100))
    assert skipped.endpoints.socket is None


def test_a_given_socket_path_too_long_is_refused(start_agent: StartAgent, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="longer than the 107 bytes"):
        start_agent(predict_socket=str(tmp_path / ("y" * 120) / "p.sock"))


def test_a_failover_client_inlines_shared_inputs_for_neighbours(
    digits_data: DigitsData,
) -> None:
    """What goes to a neighbour carries every input inline (``sharedmem.inlined``)."""
    x = np.ascontiguousarray(digits_data.x_test[:300])
    stager = sharedmem.Stager(threshold=0)
    try:
        with stager.request({"pixels": x}, output_names=["label"], release="r") as request:
            out = sharedmem.inlined(request)
        assert not out.shared_inputs and out.output_names == ["label"] and out.release == "r"
        assert wire.array_from_pb(out.inputs[0]).tobytes() == x.tobytes()
    finally:
        stager.close()
    assert leftover_regions() == []


def test_a_region_whose_call_failed_is_never_written_again() -> None:
    x = np.arange(64 * 300, dtype=np.float32).reshape(300, 64)
    stager = sharedmem.Stager(threshold=0)
    try:
        with stager.request({"pixels": x}) as first:
            used = first.shared_inputs[0].region
        with stager.request({"pixels": x}) as again:  # given back after success: reused
            assert again.shared_inputs[0].region == used
        with pytest.raises(grpc.RpcError), stager.request({"pixels": x}) as failed:
            assert failed.shared_inputs[0].region == used
            raise grpc.RpcError("the call failed: the agent may still read the region")
        assert not (sharedmem.SHM_ROOT / used).exists()  # retired: unlinked
        with stager.request({"pixels": x}) as fresh:
            assert fresh.shared_inputs[0].region != used
            assert np.array_equal(sharedmem.read(fresh.shared_inputs[0]), x)
    finally:
        stager.close()
    assert leftover_regions() == []
