"""Registered regions on the fast local path (``fastpath.REGISTER``), as Triton's system
shared-memory extension has them: a connection registers a sealed memfd once and names it
(``#ID``) in its requests; the agent maps it once and keeps it for the connection's life.

A real ``edge-agent run`` process serves the digits model; the tests compare what comes over
registered regions with what gRPC Predict answers, send the registrations and requests the
agent must refuse (and see it serve on), put outputs in a region, grow a region, and watch the
agent's mappings go when the connection closes.
"""

from __future__ import annotations

import fcntl
import os
import socket
from functools import partial

import grpc
import numpy as np

from edgefleet.agent.client import FailoverClient
from edgefleet.common import fastpath, sharedmem, wire
from edgefleet.demo.digits import DigitsData
from edgefleet.v1 import inference_pb2
from tests.agent.conftest import FastAgent
from tests.agent.helpers import (
    outputs,
    predict_request,
    unique_id,
    wait_for,
)
from tests.agent.test_fast_path import (
    frame,
    raw,
    read_reply,
    refusal,
)

ROWS = 300
ROW_BYTES = 64 * 4  # a digits image: 64 float32


def register(
    sock: socket.socket, region_id: int, fds: list[int]
) -> tuple[grpc.StatusCode | None, bytes]:
    body = fastpath.REGION_ID.pack(region_id)
    fastpath.send_parts(sock, [fastpath.control_frame(fastpath.REGISTER, body)], fds)
    return read_reply(sock)


def unregister(sock: socket.socket, region_id: int) -> tuple[grpc.StatusCode | None, bytes]:
    body = fastpath.REGION_ID.pack(region_id)
    sock.sendall(fastpath.control_frame(fastpath.UNREGISTER, body))
    return read_reply(sock)


def predict_raw(
    sock: socket.socket, request: inference_pb2.PredictRequest, *, prefix: bytes = b""
) -> tuple[grpc.StatusCode | None, bytes]:
    sock.sendall(prefix + frame(request.SerializeToString()))
    return read_reply(sock)


def named(
    region: sharedmem.SealedRegion, x: np.ndarray, region_id: int = 1, offset: int = 0
) -> inference_pb2.PredictRequest:
    """A request whose input ``x`` is written at ``offset`` of ``region``, registered as
    ``region_id``."""
    return inference_pb2.PredictRequest(
        shared_inputs=[region.put("pixels", x, offset=offset, region=f"#{region_id}")]
    )


def reply_outputs(answer: tuple[grpc.StatusCode | None, bytes]) -> dict[str, object]:
    code, body = answer
    assert code is None, body.decode(errors="replace")
    return dict(outputs(inference_pb2.PredictResponse.FromString(body)))


def mappings(pid: int, name: str) -> int:
    """How many of the agent's mappings are of a memfd called ``name``."""
    with open(f"/proc/{pid}/maps") as maps:
        return sum(f"/memfd:{name} " in line for line in maps)


def grpc_refusal(a: FastAgent, pixels: np.ndarray) -> tuple[grpc.StatusCode, str]:
    """The code and message gRPC Predict refuses ``pixels`` (sent inline) with."""
    request = inference_pb2.PredictRequest(inputs=[wire.array_to_pb("pixels", pixels)])
    return refusal(partial(predict_request, a.unix, request))


def expected_for(
    a: FastAgent, x: np.ndarray, output_names: tuple[str, ...] = ()
) -> dict[str, object]:
    request = inference_pb2.PredictRequest(
        inputs=[wire.array_to_pb("pixels", x)], output_names=output_names
    )
    return dict(outputs(predict_request(a.unix, request)))


def test_registered_regions_answer_as_grpc_does(
    fast_agent: FastAgent, digits_data: DigitsData
) -> None:
    """The client's default for large inputs: a region registered once per connection,
    rewritten each call, grown when a request does not fit; every answer and refusal as gRPC
    Predict gives it."""
    a = fast_agent
    with fastpath.FastPathClient(a.fast, shm_threshold=0) as fast:
        for rows in (10, 10, ROWS, 5, ROWS):  # the region grows once, then serves them all
            x = np.ascontiguousarray(digits_data.x_test[:rows])
            assert outputs(fast.predict_arrays({"pixels": x})) == expected_for(a, x)
        x = np.ascontiguousarray(digits_data.x_test[:ROWS])
        picked = fast.predict_arrays({"pixels": x}, output_names=["label"])
        assert outputs(picked) == expected_for(a, x, ("label",))
        # the model's own refusal of a tensor in the region: the code and words gRPC has
        wrong = np.ascontiguousarray(digits_data.x_test[:ROWS, :63])
        code, message = grpc_refusal(a, wrong)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert refusal(partial(fast.predict_arrays, {"pixels": wrong})) == (code, message)
        assert refusal(partial(fast.predict_arrays, {"nope": x}))[0] == code
        assert outputs(fast.predict_arrays({"pixels": x})) == expected_for(a, x)  # served on
    with FailoverClient(a.tcp, local_socket=a.grpc_socket, shm_threshold=0) as client:
        assert outputs(client.predict({"pixels": x})) == expected_for(a, x)
        assert client.paths == {"fast": 1}


def test_registrations_and_names_the_agent_refuses(
    fast_agent: FastAgent, digits_data: DigitsData
) -> None:
    """Seals missing, no descriptor, an unknown id, bytes beyond a region, too many regions or
    bytes: refused with the reason, and the connection and the agent serve on."""
    a = fast_agent
    x = np.ascontiguousarray(digits_data.x_test[:ROWS])
    expected = expected_for(a, x)
    bad, full = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED
    region = sharedmem.SealedRegion(ROWS * ROW_BYTES)
    unsealed = os.memfd_create("unsealed", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    half = os.memfd_create("half-sealed", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    huge = sharedmem.SealedRegion(fastpath.MAX_REGION_BYTES)  # sparse: no memory taken
    spare = [sharedmem.SealedRegion(4096) for _ in range(fastpath.MAX_REGIONS)]
    sock = raw(a.fast)
    try:
        os.ftruncate(unsealed, 4096)
        os.ftruncate(half, 4096)
        fcntl.fcntl(half, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
        for fd in (unsealed, half):
            code, body = register(sock, 1, [fd])
            assert code == bad and b"sealed against shrinking and growing" in body
        code, body = register(sock, 1, [])
        assert code == bad and b"passes one descriptor" in body
        code, body = register(sock, 1, [region.fd, region.fd])
        assert code == bad and b"passes one descriptor" in body
        code, body = register(sock, 1, [region.fd])
        assert code is None and fastpath.REGION_SIZE.unpack(body) == (region.size,)
        assert reply_outputs(predict_raw(sock, named(region, x))) == expected

        code, body = predict_raw(sock, named(region, x, region_id=7))
        assert code == bad and b"region 7 is not registered on this connection" in body
        beyond = named(region, x)
        beyond.shared_inputs[0].offset = 64
        code, body = predict_raw(sock, beyond)
        assert code == bad and b"are beyond its" in body
        code, body = unregister(sock, 7)
        assert code == bad and b"not registered" in body
        # another connection has regions of its own; gRPC has none
        with raw(a.fast) as other:
            code, body = predict_raw(other, named(region, x))
            assert code == bad and b"not registered on this connection" in body
        code, message = refusal(partial(predict_request, a.unix, named(region, x)))
        assert code == bad and "not a region name" in message

        # the limits: regions, then bytes
        for i, small in enumerate(spare[1:], start=2):
            assert register(sock, i, [small.fd])[0] is None
        code, body = register(sock, 99, [spare[0].fd])
        assert code == full and b"limit of 8 registered regions" in body
        assert register(sock, 2, [spare[0].fd])[0] is None  # an id it has: replaced
        assert unregister(sock, 2) == (None, b"")
        code, body = register(sock, 2, [huge.fd])
        assert code == full and b"over its limit of" in body
        assert reply_outputs(predict_raw(sock, named(region, x))) == expected  # served on
        # a control frame of a kind there is not: answered, and the connection serves on
        sock.sendall(fastpath.control_frame(0x55, b"x"))
        code, body = read_reply(sock)
        assert code == bad and b"no such kind" in body
        assert reply_outputs(predict_raw(sock, named(region, x))) == expected
    finally:
        sock.close()
        for r in (region, huge, *spare):
            r.close()
        os.close(unsealed)
        os.close(half)
    with fastpath.FastPathClient(a.fast, shm_threshold=0) as fast:  # the agent serves on
        assert outputs(fast.predict_arrays({"pixels": x})) == expected


def test_outputs_in_a_registered_region(fast_agent: FastAgent, digits_data: DigitsData) -> None:
    """``OUTPUTS``: the reply carries no tensor bytes, the region holds them as
    ``output_layout`` says; outputs that do not fit come inline; a region sealed against
    writes takes none."""
    a = fast_agent
    x = np.ascontiguousarray(digits_data.x_test[:ROWS])
    expected = expected_for(a, x)
    inputs = sharedmem.SealedRegion(ROWS * ROW_BYTES)
    out = sharedmem.SealedRegion(64 << 10)
    tiny = sharedmem.SealedRegion(64)
    readonly = os.memfd_create("readonly", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    sock = raw(a.fast)
    try:
        os.ftruncate(readonly, 4096)
        fcntl.fcntl(readonly, fcntl.F_ADD_SEALS, sharedmem.SEALS | fcntl.F_SEAL_WRITE)
        for region_id, fd in ((1, inputs.fd), (2, out.fd), (3, tiny.fd), (4, readonly)):
            assert register(sock, region_id, [fd])[0] is None
        request = named(inputs, x)

        def into(region_id: int, offset: int, length: int) -> bytes:
            body = fastpath.OUTPUTS_AT.pack(region_id, offset, length)
            return fastpath.control_frame(fastpath.OUTPUTS, body)

        code, body = predict_raw(sock, request, prefix=into(2, 128, out.size - 128))
        assert code is None
        reply = inference_pb2.PredictResponse.FromString(body)
        assert [t.data for t in reply.outputs] == [b"" for _ in expected]  # no tensor bytes
        starts, _ = fastpath.output_layout(reply.outputs, 128)
        placed = {
            t.name: (t.dtype, list(t.shape), out.read(start, start + fastpath.nbytes_of(t)))
            for t, start in zip(reply.outputs, starts, strict=True)
        }
        assert placed == expected

        code, body = predict_raw(sock, request, prefix=into(3, 0, 64))  # too small: inline
        assert reply_outputs((code, body)) == expected
        code, body = predict_raw(sock, request, prefix=into(4, 0, 4096))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and b"sealed against writes" in body
        code, body = predict_raw(sock, request, prefix=into(2, 0, out.size + 1))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and b"beyond its" in body
        code, body = predict_raw(sock, request, prefix=into(9, 0, 64))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and b"not registered" in body
        assert reply_outputs(predict_raw(sock, request)) == expected  # served on
    finally:
        sock.close()
        for r in (inputs, out, tiny):
            r.close()
        os.close(readonly)
    # the client's way: the same answer, its output region grown to what the reply needs
    with fastpath.FastPathClient(a.fast, shm_threshold=0, shm_outputs=True) as fast:
        for rows in (ROWS, 10, ROWS):
            x = np.ascontiguousarray(digits_data.x_test[:rows])
            assert outputs(fast.predict_arrays({"pixels": x})) == expected_for(a, x)
        big = np.ascontiguousarray(np.tile(digits_data.x_test[:ROWS], (10, 1)))  # 3000 rows
        for _ in range(2):  # inline for want of room, then in the grown region
            assert outputs(fast.predict_arrays({"pixels": big})) == expected_for(a, big)


def test_a_region_registered_again_larger_is_swapped_in(
    fast_agent: FastAgent, digits_data: DigitsData
) -> None:
    a = fast_agent
    x = np.ascontiguousarray(digits_data.x_test[:ROWS])
    small = sharedmem.SealedRegion(10 * ROW_BYTES)
    large = sharedmem.SealedRegion(2 * ROWS * ROW_BYTES)
    sock = raw(a.fast)
    try:
        assert register(sock, 1, [small.fd])[0] is None
        code, body = predict_raw(sock, named(small, x[:10]))
        assert reply_outputs((code, body)) == expected_for(a, x[:10])
        code, body = predict_raw(sock, named(large, x, offset=ROWS * ROW_BYTES))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and b"are beyond its" in body
        assert register(sock, 1, [large.fd])[0] is None
        code, body = predict_raw(sock, named(large, x, offset=ROWS * ROW_BYTES))
        assert reply_outputs((code, body)) == expected_for(a, x)
    finally:
        sock.close()
        small.close()
        large.close()


def test_closing_the_connection_frees_its_regions(
    fast_agent: FastAgent, digits_data: DigitsData
) -> None:
    """The agent maps a registered region once, keeps it across requests, and unmaps it when
    it is unregistered or its connection closes."""
    a = fast_agent
    assert a.proc.proc is not None
    pid = a.proc.proc.pid
    x = np.ascontiguousarray(digits_data.x_test[:ROWS])
    names = [f"edgefleet-test-{unique_id()}" for _ in range(2)]
    regions = []
    for name in names:
        fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.ftruncate(fd, ROWS * ROW_BYTES)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, sharedmem.SEALS | fcntl.F_SEAL_SEAL)
        regions.append(fd)
    data = x.tobytes()
    for fd in regions:
        os.pwrite(fd, data, 0)
    request = inference_pb2.PredictRequest(
        shared_inputs=[
            inference_pb2.SharedTensor(
                name="pixels",
                dtype="float32",
                shape=list(x.shape),
                region="#1",
                offset=0,
                byte_size=len(data),
            )
        ]
    )
    expected = expected_for(a, x)
    sock = raw(a.fast)
    try:
        assert mappings(pid, names[0]) == 0
        for region_id, fd in enumerate(regions, start=1):
            assert register(sock, region_id, [fd])[0] is None
        for _ in range(20):
            assert reply_outputs(predict_raw(sock, request)) == expected
        assert [mappings(pid, n) for n in names] == [1, 1]  # mapped once, kept
        assert unregister(sock, 2) == (None, b"")
        wait_for("the unregistered region unmapped", lambda: mappings(pid, names[1]) == 0)
        assert mappings(pid, names[0]) == 1
    finally:
        sock.close()
        for fd in regions:
            os.close(fd)
    wait_for("the closed connection's region unmapped", lambda: mappings(pid, names[0]) == 0)


def test_a_lease_serves_what_the_app_wrote_in_place(
    fast_agent: FastAgent, digits_data: DigitsData
) -> None:
    """``FastPathClient.lease``: arrays in the registered region, written by the app, named
    by each call without a copy; refusals as gRPC's; done once closed."""
    a = fast_agent
    with fastpath.FastPathClient(a.fast) as fast:
        with fast.lease({"pixels": ((ROWS, 64), np.float32)}) as lease:
            view = lease.arrays["pixels"]
            for start in (0, 150, 7):
                x = np.ascontiguousarray(digits_data.x_test[start : start + ROWS])
                view[...] = x
                assert outputs(lease.predict()) == expected_for(a, x)
            picked = lease.predict(output_names=["label"])
            assert outputs(picked) == expected_for(a, x, ("label",))
        assert refusal(lease.predict)[0] == grpc.StatusCode.UNAVAILABLE
        wrong = np.ascontiguousarray(digits_data.x_test[:ROWS, :63])
        code, message = grpc_refusal(a, wrong)
        with fast.lease({"pixels": (wrong.shape, wrong.dtype)}) as bad:
            bad.arrays["pixels"][...] = wrong
            assert refusal(bad.predict) == (code, message)
            assert refusal(bad.predict) == (code, message)  # an answer: the lease serves on
