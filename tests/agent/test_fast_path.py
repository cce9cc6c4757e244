"""The fast local path: Predict without gRPC over ``DATA_DIR/predict.fast.sock``.

A real ``edge-agent run`` process serves the digits model; the tests call it over its gRPC
Unix socket and over the fast socket (``edgefleet.common.fastpath``) and compare bytes, codes
and messages, send it frames it must refuse, fill its connections, kill and restart it under a
client, and call it through ``FailoverClient``.
"""

from __future__ import annotations

import json
import os
import socket
import stat
from collections.abc import Callable
from functools import partial
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf.message import DecodeError

from edgefleet.agent import serving
from edgefleet.agent.client import FailoverClient
from edgefleet.agent.serving import SOCKET_MODE
from edgefleet.common import fastpath, sharedmem, wire
from edgefleet.common.errors import InvalidInputError
from edgefleet.demo.digits import DigitsData, TrainedModel
from edgefleet.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from tests.agent.conftest import MAX_CONCURRENT, FastAgent, StartAgent, agent_process
from tests.agent.helpers import (
    ArtifactServer,
    Signer,
    outputs,
    predict_request,
    serving_v1,
    wait_for,
)
from tests.conftest import Broker


def refusal(fn: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    """The code and message the call ``fn()`` fails with."""
    with pytest.raises(grpc.RpcError) as err:
        fn()
    return err.value.code(), err.value.details() or ""


def tensor(dtype: str, data: bytes) -> common_pb2.Tensor:
    return common_pb2.Tensor(name="pixels", dtype=dtype, shape=[4, 64], data=data)


def raw(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(path))
    return sock


def read_reply(sock: socket.socket) -> tuple[grpc.StatusCode | None, bytes]:
    """One reply frame: (None, the PredictResponse's bytes) or (the error's code, message)."""
    header = b""
    while len(header) < fastpath.REPLY_HEADER.size:
        chunk = sock.recv(fastpath.REPLY_HEADER.size - len(header))
        assert chunk, "closed before a reply"
        header += chunk
    length, status = fastpath.REPLY_HEADER.unpack(header)
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        assert chunk, "the reply was cut short"
        body += chunk
    return (None if status == fastpath.OK else fastpath.code_of(status)), body


def closed(sock: socket.socket) -> bool:
    """Whether the agent closed ``sock`` (a reset where it left bytes of ours unread)."""
    try:
        return sock.recv(16) == b""
    except ConnectionResetError:
        return True


def frame(body: bytes) -> bytes:
    return fastpath.REQUEST_HEADER.pack(len(body)) + body


def test_the_fast_socket_answers_as_grpc_does(
    fast_agent: FastAgent, digits_data: DigitsData
) -> None:
    a = fast_agent
    info = a.fast.lstat()
    assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == SOCKET_MODE == 0o660
    assert f"fast_socket=unix:{a.fast}" in a.proc.output()  # the ready line
    written = json.loads((a.proc.data_dir / "agent.json").read_text())
    assert written["predict_fast_socket"] == f"unix:{a.fast}"

    x = np.ascontiguousarray(digits_data.x_test[:300])
    expected = predict_request(
        a.unix, inference_pb2.PredictRequest(inputs=[wire.array_to_pb("pixels", x)])
    )
    with fastpath.FastPathClient(a.fast) as fast:
        inline = fast.call(fastpath.request_parts({"pixels": x}))  # the array's bytes, not copied
        assert outputs(inline) == outputs(expected)
        assert inline.device_id == a.proc.device_id and inline.release == "digits:1.0.0"
        built = fast.predict(
            inference_pb2.PredictRequest(
                inputs=[wire.array_to_pb("pixels", x)], output_names=["label"]
            )
        )
        assert outputs(built) == {"label": outputs(expected)["label"]}
        strided = x[::2]  # not contiguous: sent as a copy, the same answer
        assert outputs(fast.call(fastpath.request_parts({"pixels": strided}))) == outputs(
            predict_request(
                a.unix, inference_pb2.PredictRequest(inputs=[wire.array_to_pb("pixels", strided)])
            )
        )
        large = np.ascontiguousarray(np.tile(x, (70, 1)))  # 5.4 MB: over the buffer kept
        large_request = inference_pb2.PredictRequest(inputs=[wire.array_to_pb("pixels", large)])
        for _ in range(2):
            assert outputs(fast.call(fastpath.request_parts({"pixels": large}))) == outputs(
                predict_request(a.unix, large_request)
            )
        stager = sharedmem.Stager(threshold=0)
        try:
            with stager.request({"pixels": x}) as staged:
                assert staged.shared_inputs and not staged.inputs
                assert outputs(fast.predict(staged)) == outputs(expected)
        finally:
            stager.close()

        good = wire.array_to_pb("pixels", x[:4])
        cases = {
            "wrong shape": [wire.array_to_pb("pixels", x[:4, :10])],
            "unknown input": [wire.array_to_pb("pixles", x[:4])],
            "model's other dtype": [wire.array_to_pb("pixels", x[:4].astype(np.float64))],
            "unknown dtype": [tensor("bogus", good.data)],
            "bytes short of the shape": [tensor("float32", good.data[:-4])],
            "named twice": [good, good],
        }
        for what, inputs in cases.items():
            request = inference_pb2.PredictRequest(inputs=inputs)
            code, message = refusal(partial(predict_request, a.unix, request))
            assert code == grpc.StatusCode.INVALID_ARGUMENT, what
            assert refusal(partial(fast.predict, request)) == (code, message), what
        region = inference_pb2.SharedTensor(
            name="pixels", dtype="float32", shape=[4, 64], region="../../etc/passwd", byte_size=1024
        )
        bad = inference_pb2.PredictRequest(shared_inputs=[region])
        code, message = refusal(lambda: predict_request(a.unix, bad))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "not a region name" in message
        assert refusal(lambda: fast.predict(bad)) == (code, message)
        no_such_output = inference_pb2.PredictRequest(inputs=[good], output_names=["nope"])
        code, message = refusal(partial(predict_request, a.unix, no_such_output))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert refusal(partial(fast.predict, no_such_output)) == (code, message)
        assert outputs(fast.call(fastpath.request_parts({"pixels": x}))) == outputs(expected)

    with FailoverClient(a.tcp, local_socket=a.grpc_socket, shm_threshold=None) as client:
        assert client.fast_endpoint == f"unix:{a.fast}"  # beside the gRPC socket
        assert outputs(client.predict({"pixels": x})) == outputs(expected)
        assert client.paths == {"fast": 1}
    with FailoverClient(a.tcp, local_socket=a.grpc_socket, shm_threshold=0) as shm_client:
        assert outputs(shm_client.predict({"pixels": x})) == outputs(expected)  # staged
        assert shm_client.paths == {"fast": 1}
    with FailoverClient(a.tcp, local_socket=a.grpc_socket, fast_socket="") as grpc_only:
        assert grpc_only.fast_endpoint is None
        assert outputs(grpc_only.predict({"pixels": x})) == outputs(expected)
        assert grpc_only.paths == {"grpc": 1}


def test_frames_the_fast_socket_refuses(fast_agent: FastAgent, digits_data: DigitsData) -> None:
    a = fast_agent
    x = np.ascontiguousarray(digits_data.x_test[:4])
    request = inference_pb2.PredictRequest(inputs=[wire.array_to_pb("pixels", x)])
    expected = outputs(predict_request(a.unix, request))

    with raw(a.fast) as sock:  # garbage: INVALID_ARGUMENT, and the connection serves on
        sock.sendall(frame(b"\xff\xff\xff\xff"))
        code, message = read_reply(sock)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert b"not a PredictRequest" in message
        sock.sendall(frame(b"\x0a\x05\x0a\x03abc\x0f"))  # a tensor, then a truncated field
        assert read_reply(sock)[0] == grpc.StatusCode.INVALID_ARGUMENT
        sock.sendall(frame(request.SerializeToString()))
        code, body = read_reply(sock)
        assert code is None
        assert outputs(inference_pb2.PredictResponse.FromString(body)) == expected

    with raw(a.fast) as sock:  # over predict_max_bytes: RESOURCE_EXHAUSTED, closed unread
        sock.sendall(fastpath.REQUEST_HEADER.pack((16 << 20) + 1) + b"\x00" * 1024)
        code, message = read_reply(sock)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert b"over the agent's limit of 16777216" in message
        assert closed(sock)

    with grpc.insecure_channel(f"unix:{a.fast}") as channel:  # a gRPC client on the wrong one
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        code, details = refusal(lambda: stub.Predict(request, timeout=10))
    assert code == grpc.StatusCode.UNAVAILABLE
    assert "fast local path" in details and "gRPC clients use its --predict-socket" in details

    limit = MAX_CONCURRENT + 4
    held = [raw(a.fast) for _ in range(limit)]
    try:
        for sock in held:  # each one accepted and served
            sock.sendall(frame(request.SerializeToString()))
            assert read_reply(sock)[0] is None
        with raw(a.fast) as one_more:
            code, message = read_reply(one_more)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert f"at most {limit} fast-path connections".encode() in message
            assert closed(one_more)
        with fastpath.FastPathClient(a.fast) as client:
            assert refusal(lambda: client.predict(request))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
            held.pop().close()  # one freed: served again

            def served() -> bool:
                try:
                    return outputs(client.predict(request)) == expected
                except fastpath.FastPathError as exc:
                    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    return False

            wait_for("a freed connection to be taken", served, timeout=10)
    finally:
        for sock in held:
            sock.close()


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_sealed_regions_passed_by_descriptor(
    fast_agent: FastAgent, digits_data: DigitsData, tmp_path: Path
) -> None:
    """A memfd sealed at its size goes with the request (SCM_RIGHTS) and is read in place;
    an unsealed one, another kind of file, a name with no descriptor or bytes beyond it are
    INVALID_ARGUMENT; the agent keeps none of the descriptors."""
    a = fast_agent
    assert a.proc.proc is not None
    pid = a.proc.proc.pid
    x = np.ascontiguousarray(digits_data.x_test[:300])
    expected = outputs(
        predict_request(
            a.unix, inference_pb2.PredictRequest(inputs=[wire.array_to_pb("pixels", x)])
        )
    )
    stager = sharedmem.Stager(threshold=0)
    with (
        fastpath.FastPathClient(a.fast) as fast,
        stager.sealed_request({"pixels": x}) as (request, fds),
    ):
        assert request.shared_inputs[0].region == "@0" and len(fds) == 1
        assert outputs(fast.predict(request, fds=fds)) == expected
        before = open_fds(pid)
        for _ in range(50):
            assert outputs(fast.predict(request, fds=fds)) == expected
        # each passed descriptor closed (the agent's other sockets come and go meanwhile)
        assert open_fds(pid) < before + 10
        wrong_index = inference_pb2.PredictRequest()
        wrong_index.CopyFrom(request)
        wrong_index.shared_inputs[0].region = "@1"
        code, message = refusal(partial(fast.predict, wrong_index, fds=fds))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "names no descriptor" in message
        beyond = inference_pb2.PredictRequest()
        beyond.CopyFrom(request)
        beyond.shared_inputs[0].offset = 64
        code, message = refusal(partial(fast.predict, beyond, fds=fds))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "are beyond its" in message
        code, message = refusal(partial(predict_request, a.unix, request))  # no descriptor there
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "not a region name" in message

        unsealed = os.memfd_create("unsealed", os.MFD_CLOEXEC)
        plain = os.open(tmp_path / "plain", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            for fd in (unsealed, plain):
                os.ftruncate(fd, 300 * 64 * 4)
                code, message = refusal(partial(fast.predict, request, fds=[fd]))
                assert code == grpc.StatusCode.INVALID_ARGUMENT
                assert "must be a memfd sealed against shrinking and growing" in message
        finally:
            os.close(unsealed)
            os.close(plain)
        assert outputs(fast.predict(request, fds=fds)) == expected  # served on
    stager.close()
    # nor the refused ones, nor the mapping once the connection is gone
    wait_for("the agent to hold no descriptor of ours", lambda: open_fds(pid) < before + 3)


def test_a_layout_served_before_reads_each_requests_own_bytes(
    fast_agent: FastAgent, digits_data: DigitsData
) -> None:
    """The agent serves a request laid out as one it served before (same tensors' names,
    dtypes, shapes and regions) from what it learnt then, without parsing it again: each
    request is still answered for its own bytes, inline or in whichever sealed region it
    passes, and one whose descriptors no longer fit is refused as the first time would be."""
    a = fast_agent
    x1 = np.ascontiguousarray(digits_data.x_test[:40])
    x2 = np.ascontiguousarray(digits_data.x_test[40:80])
    assert x1.tobytes() != x2.tobytes()

    def over_grpc(x: np.ndarray) -> dict[str, tuple[str, list[int], bytes]]:
        request = inference_pb2.PredictRequest(inputs=[wire.array_to_pb("pixels", x)])
        return outputs(predict_request(a.unix, request))

    expected = [over_grpc(x1), over_grpc(x2)]
    assert expected[0] != expected[1]
    regions = [sharedmem.SealedRegion(x1.nbytes) for _ in range(2)]
    small = sharedmem.SealedRegion(4096)
    spares = [sharedmem.SealedRegion(4096) for _ in range(9)]
    try:
        laid = [region.put("pixels", x) for region, x in zip(regions, (x1, x2), strict=True)]
        assert laid[0] == laid[1]  # one layout, two regions
        request = inference_pb2.PredictRequest(shared_inputs=[laid[0]])
        with fastpath.FastPathClient(a.fast) as fast:
            for _ in range(3):  # alternating, on one connection
                for i, x in enumerate((x1, x2)):
                    assert outputs(fast.call(fastpath.request_parts({"pixels": x}))) == expected[i]
                    assert outputs(fast.predict(request, fds=[regions[i].fd])) == expected[i]
            code, message = refusal(partial(fast.predict, request))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "names no descriptor" in message
            code, message = refusal(partial(fast.predict, request, fds=[small.fd]))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "are beyond its" in message
            code, message = refusal(partial(fast.predict, request, fds=[s.fd for s in spares]))
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            assert "more than 8 descriptors" in message
            regions[0].put("pixels", x2)  # the region's bytes now, not those of the last call
            assert outputs(fast.predict(request, fds=[regions[0].fd])) == expected[1]
            assert outputs(fast.call(fastpath.request_parts({"pixels": x1}))) == expected[0]
    finally:
        for region in (*regions, small, *spares):
            region.close()


def test_a_request_sent_on_to_a_neighbour_is_a_copy() -> None:
    """What a neighbour is sent carries the inputs' bytes; the request the agent served from
    (the fast path keeps it for the next one laid out alike) stays as it was."""
    request = inference_pb2.PredictRequest(
        inputs=[common_pb2.Tensor(name="x", dtype="float32", shape=[2])], release="m:1"
    )
    data = np.arange(2, dtype=np.float32).tobytes()
    full = serving._with_data(request, [memoryview(data)])
    assert full.inputs[0].data == data and full.release == "m:1"
    assert request.inputs[0].data == b""


def test_the_client_reconnects_after_the_agent_restarts(
    broker: Broker, short_dir: Path, signer: Signer, artifacts: ArtifactServer,
    digits_model: TrainedModel, digits_data: DigitsData,
) -> None:  # fmt: skip
    proc = agent_process(short_dir, broker, signer, artifacts)
    fast_path = proc.data_dir / "predict.fast.sock"
    x = np.ascontiguousarray(digits_data.x_test[:8])
    serving = serving_v1(proc, signer, artifacts, digits_model.onnx_bytes, broker_url=broker.url)
    with serving, fastpath.FastPathClient(fast_path, deadline=5) as client:
        first = outputs(client.call(fastpath.request_parts({"pixels": x})))

        proc.kill()  # SIGKILL: the socket file stays behind, the client's connection dies
        assert fast_path.is_socket()
        with pytest.raises(fastpath.FastPathError) as err:
            client.call(fastpath.request_parts({"pixels": x}))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and not err.value.answered

        proc.start()  # the stale socket is removed, the last good model restored
        assert outputs(client.call(fastpath.request_parts({"pixels": x}))) == first

        # a live one is refused: another agent told to serve on the same path
        other = agent_process(
            short_dir, broker, signer, artifacts,
            "--predict-socket", "", "--predict-fast-socket", str(fast_path),
        )  # fmt: skip
        other.launch()
        assert other.wait_exit() == 2
        assert f"--predict-fast-socket {fast_path}: another process serves on it" in (
            other.output()
        )
        assert outputs(client.call(fastpath.request_parts({"pixels": x}))) == first

        assert proc.terminate() == 0  # a clean stop removes the socket file
        assert not fast_path.exists()
        with pytest.raises(fastpath.FastPathError) as err:
            client.call(fastpath.request_parts({"pixels": x}))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "cannot connect" in err.value.details()


def test_the_fast_socket_can_be_moved_or_turned_off(
    start_agent: StartAgent, short_dir: Path, tmp_path: Path
) -> None:
    moved = short_dir / "apps.fast.sock"
    a = start_agent(data_dir=short_dir / "d1", predict_fast_socket=str(moved))
    assert a.endpoints.fast_socket == f"unix:{moved}" and moved.is_socket()
    off = start_agent(data_dir=short_dir / "d2", predict_fast_socket="")
    assert off.endpoints.fast_socket is None
    assert not (short_dir / "d2" / "predict.fast.sock").exists()
    assert off.endpoints.socket is not None  # the gRPC socket is another setting
    skipped = start_agent(data_dir=tmp_path / ("x" * 100))  # the default, too long: skipped
    assert skipped.endpoints.fast_socket is None
    with pytest.raises(InvalidInputError, match="longer than the 107 bytes"):
        start_agent(predict_fast_socket=str(tmp_path / ("y" * 120) / "p.sock"))
    with pytest.raises(InvalidInputError, match="name the same path"):
        start_agent(data_dir=short_dir / "d3", predict_fast_socket="predict.sock")


def test_split_request_reads_what_protobuf_reads() -> None:
    """The server parses requests leaving tensor bytes in place; what it makes of them is what
    protobuf makes of the same bytes, fields in any order, repeated ones concatenated."""
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    y = np.arange(5, dtype=np.int64)
    shared = inference_pb2.PredictRequest(
        shared_inputs=[inference_pb2.SharedTensor(name="s", region="r", byte_size=8)]
    )
    parts = fastpath.request_parts({"x": x, "y": y}, output_names=["o"], release="m:1", rest=shared)
    body = b"".join(bytes(p) for p in parts)
    request, data = fastpath.split_request(memoryview(body))
    parsed = inference_pb2.PredictRequest.FromString(body)
    assert [bytes(d) for d in data] == [t.data for t in parsed.inputs] == [x.tobytes(), y.tobytes()]
    for t in parsed.inputs:
        t.data = b""
    assert request == parsed
    assert parsed.output_names == ["o"] and parsed.release == "m:1" and parsed.shared_inputs
    assert np.array_equal(wire.array_from_pb(request.inputs[0], data[0]), x)
    empty = np.zeros((0, 3), np.float32)
    body = b"".join(bytes(p) for p in fastpath.request_parts({"e": empty}))
    request, data = fastpath.split_request(memoryview(body))
    assert wire.array_from_pb(request.inputs[0], data[0]).shape == (0, 3)
    for junk in (b"\x0a\x05\x0a\x03ab", b"\x0b", b"\x08\xff", b"\x00\x01"):
        with pytest.raises(DecodeError):
            inference_pb2.PredictRequest.FromString(junk)
        with pytest.raises(DecodeError):
            fastpath.split_request(memoryview(junk))


def test_a_sealed_region_cannot_change_size() -> None:
    """What lets the agent map it: the kernel refuses to shrink or grow it (no SIGBUS)."""
    region = sharedmem.SealedRegion(4096)
    try:
        for size in (0, 8192):
            with pytest.raises(PermissionError):
                os.ftruncate(region.fd, size)
        mapping = sharedmem.map_sealed(region.fd)
        assert len(mapping) == 4096
        mapping.close()
    finally:
        region.close()
