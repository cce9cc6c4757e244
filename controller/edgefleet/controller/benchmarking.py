"""Timing compression candidates on a device (``--profile-on DEVICE``): a remote ``Timer``.

Implements ``compress.timing.Timer`` by sending each candidate, with one timing feed, to the
device agent's ``InferenceService.Benchmark`` at the Predict endpoint the device announced (an
enrolled agent's mTLS peer listener, reached with the controller's client certificate). The
spec is signed with the controller's active key (payload type ``BENCHMARK_TYPE``): an agent runs
no unsigned model. An agent without ``Benchmark`` answers UNIMPLEMENTED, which ends the search
with a message that says so.

``release create --profile-on DEVICE`` times a release's default model and its variants the
same way (``DeviceTimer.profile``), each on its own execution providers, and needs the
device's reported hardware (``device_profiler``) to know which variants fit it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from edgefleet.common import rpc, signing, wire
from edgefleet.common import types as t
from edgefleet.common.errors import NotFoundError, PermanentError, TransientError
from edgefleet.common.signing import Envelope
from edgefleet.controller.compress.graphs import Feed
from edgefleet.controller.compress.timing import Latency
from edgefleet.controller.devices.registry import DeviceRegistry
from edgefleet.controller.keys import KeyRing
from edgefleet.v1 import common_pb2, inference_pb2, inference_pb2_grpc

DEADLINE_S = 300.0
RUNS = 50
WARMUP = 5


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class DeviceTimer:
    """Times models on ``device_id`` through its agent at ``endpoint`` (``HOST:PORT``)."""

    device_id: str
    endpoint: str
    sign: Callable[[bytes], Envelope]
    tls: rpc.ClientTls | None = None
    """mTLS to an enrolled agent's peer listener (the controller's client certificate, the
    device's certificate checked for ``device_id``); None: plaintext."""
    deadline_s: float = DEADLINE_S
    runs: int = RUNS
    warmup: int = WARMUP
    clock_ms: Callable[[], int] = _now_ms

    @property
    def where(self) -> str:
        return f"device:{self.device_id}"

    def request(
        self,
        model: bytes,
        feed: Feed,
        *,
        threads: int,
        providers: tuple[t.ExecutionProvider, ...] = (),
    ) -> inference_pb2.BenchmarkRequest:
        """The signed request for one timing (separate from ``measure`` so tests can check it)."""
        spec = inference_pb2.BenchmarkSpec(
            model=model,
            inputs=[wire.array_to_pb(name, value) for name, value in feed.items()],
            runs=self.runs,
            warmup=self.warmup,
            threads=threads,
            issued_at_ms=self.clock_ms(),
            providers=[
                common_pb2.ExecutionProvider(name=p.name, options=dict(p.options))
                for p in providers
            ],
        )
        envelope = self.sign(spec.SerializeToString(deterministic=True))
        return inference_pb2.BenchmarkRequest(spec=wire.envelope_to_pb(envelope))

    def measure(self, model: bytes, feed: Feed, *, threads: int) -> Latency:
        reply = self._call(self.request(model, feed, threads=threads))
        # The agent reports p95 where the local timer keeps p90: the report's second percentile;
        # and its CPUs (0 from an agent before cpu_count), the speed gate's default threads.
        return Latency(reply.p50_ms, reply.p95_ms, threads, reply.runs, reply.cpu_count)

    def profile(
        self, model: bytes, feed: Feed, *, providers: tuple[t.ExecutionProvider, ...] = ()
    ) -> tuple[float, str]:
        """``model``'s p50 in ms on the device, on ``providers`` (empty: the CPU), at ONNX
        Runtime's default threads, and the providers it ran on there."""
        reply = self._call(self.request(model, feed, threads=0, providers=providers))
        return reply.p50_ms, reply.providers

    def _call(self, request: inference_pb2.BenchmarkRequest) -> inference_pb2.BenchmarkResponse:
        with rpc.channel(self.endpoint, tls=self.tls) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            try:
                reply: inference_pb2.BenchmarkResponse = stub.Benchmark(
                    request, timeout=self.deadline_s
                )
            except grpc.RpcError as exc:
                raise self._error(exc) from None
        return reply

    def _error(self, exc: grpc.RpcError) -> Exception:
        failed = rpc.error_from_rpc(exc, target=f"device {self.device_id} at {self.endpoint}")
        if failed.code == grpc.StatusCode.UNIMPLEMENTED:
            return PermanentError(
                f"cannot profile on device {self.device_id}: its agent at {self.endpoint} does "
                "not implement Benchmark (update the agent, or leave out --profile-on to time "
                "on the controller)"
            )
        if failed.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return TransientError(f"cannot profile on device {self.device_id}: {failed}")
        return PermanentError(f"cannot profile on device {self.device_id}: {failed}")


def signer(keys: KeyRing) -> Callable[[bytes], Envelope]:
    """Sign a serialized ``BenchmarkSpec`` with the controller's active key."""

    def sign(payload: bytes) -> Envelope:
        _key_id, private_key = keys.active()
        return signing.sign(payload, signing.BENCHMARK_TYPE, private_key)

    return sign


def device_timer(
    devices: DeviceRegistry,
    keys: KeyRing,
    device_id: str,
    *,
    tls: Callable[[str], rpc.ClientTls | None] = lambda _d: None,
) -> DeviceTimer:
    """The timer for a known device that announced a Predict endpoint; checks the signing key
    now, so a missing key fails the request before any work. ``tls(device_id)``: how to reach
    it (``server``: mTLS to an enrolled device when the controller runs ``--tls``)."""
    for device in devices.list_devices():
        if device.device_id == device_id:
            break
    else:
        raise NotFoundError("device", device_id)
    if not device.predict_endpoint:
        raise PermanentError(
            f"cannot profile on device {device_id}: it has announced no Predict endpoint "
            "(is its agent online?)"
        )
    keys.active()
    return DeviceTimer(device_id, device.predict_endpoint, signer(keys), tls=tls(device_id))


def device_profiler(
    devices: DeviceRegistry,
    keys: KeyRing,
    device_id: str,
    *,
    tls: Callable[[str], rpc.ClientTls | None] = lambda _d: None,
) -> tuple[DeviceTimer, t.Hardware]:
    """``device_timer`` and the hardware the device reported, for ``release create
    --profile-on``; a device that reported none (an older agent) is refused."""
    timer = device_timer(devices, keys, device_id, tls=tls)
    hardware = next((d.hardware for d in devices.list_devices() if d.device_id == device_id), None)
    if hardware is None:
        raise PermanentError(
            f"cannot profile on device {device_id}: it has reported no hardware (an older "
            "agent); its class is not known"
        )
    return timer, hardware
