"""``InferenceService.Benchmark``: time a signed candidate model on this device.

The controller's ``benchmarking.DeviceTimer`` (``--profile-on DEVICE``) sends a signed
``BenchmarkSpec``: model bytes, one input feed, runs, warm-up, threads, ``issued_at_ms``. In
order: the signature (the agent's ``TrustStore``, payload type ``BENCHMARK_TYPE``: a device
runs no unsigned model), the age (``check_age``: older than 5 minutes or more than a minute
ahead is a replay), the limits, then a separate ONNX Runtime session (never the serving one),
on the spec's execution providers when it names some (``providers.open_session``: the first
this ONNX Runtime offers and that initialises, else the CPU; ``release create --profile-on``
times a GPU variant on the GPU), else the CPU,
the inputs (the Predict tensor helpers; names and dtypes checked against the model), warm-up,
and single timed runs; the reply names the CPUs the agent may run on (the controller's speed
gate times at that many threads unless told otherwise). One benchmark at a time
(``BenchmarkBusyError`` for a second one), on one gRPC worker thread, so Predict keeps the
others.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from edgefleet.agent import providers as choosing
from edgefleet.agent import tensors
from edgefleet.agent.percentiles import percentiles
from edgefleet.agent.runtime import Array, spec_of
from edgefleet.common import externaldata, packing, signing, wire
from edgefleet.common import types as t
from edgefleet.common.errors import EdgeFleetError, InvalidInputError
from edgefleet.common.signing import TrustStore
from edgefleet.v1 import inference_pb2

MAX_AGE_MS = 5 * 60 * 1000
MAX_AHEAD_MS = 60 * 1000
DEFAULT_RUNS, DEFAULT_WARMUP = 50, 5
MAX_RUNS, MAX_WARMUP, MAX_THREADS = 10_000, 1_000, 256


class BenchmarkBusyError(EdgeFleetError):
    """Another benchmark is running on this device (gRPC RESOURCE_EXHAUSTED)."""


def check_age(issued_at_ms: int, now_ms: int) -> str | None:
    """Why a spec issued at ``issued_at_ms`` must be refused at ``now_ms``, or None."""
    if issued_at_ms > now_ms + MAX_AHEAD_MS:
        return f"benchmark spec issued {(issued_at_ms - now_ms) / 1000:.0f}s in the future"
    if issued_at_ms < now_ms - MAX_AGE_MS:
        return (
            f"benchmark spec issued {(now_ms - issued_at_ms) / 1000:.0f}s ago (older than "
            f"{MAX_AGE_MS // 60_000} minutes: refused as a replay)"
        )
    return None


@dataclass(frozen=True)
class Timing:
    p50_ms: float
    p95_ms: float
    p99_ms: float
    runs: int
    providers: str
    cpu_count: int = 0


def cpu_count() -> int:
    """CPUs this process may run on (a container's or a cpuset's limit, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Benchmarker:
    def __init__(
        self,
        trust: TrustStore,
        *,
        clock_ms: Callable[[], int] = _now_ms,
        busy: threading.Lock | None = None,
    ) -> None:
        self._trust = trust
        self._clock_ms = clock_ms
        self._busy = busy or threading.Lock()  # held while a benchmark runs

    def run(self, request: inference_pb2.BenchmarkRequest) -> Timing:
        """Verify and time ``request``; raises an ``EdgeFleetError`` saying what was wrong."""
        payload = self._trust.verify(
            wire.envelope_from_pb(request.spec), expected_type=signing.BENCHMARK_TYPE
        )
        spec = wire.parse(inference_pb2.BenchmarkSpec, payload, what="benchmark spec")
        problem = check_age(spec.issued_at_ms, self._clock_ms())
        if problem:
            raise InvalidInputError(problem)
        runs, warmup = spec.runs or DEFAULT_RUNS, spec.warmup or DEFAULT_WARMUP
        if runs > MAX_RUNS or warmup > MAX_WARMUP or spec.threads > MAX_THREADS:
            raise InvalidInputError(
                f"benchmark limits: runs <= {MAX_RUNS}, warmup <= {MAX_WARMUP}, "
                f"threads <= {MAX_THREADS}"
            )
        feed = tensors.decode_all(spec.inputs)
        if not self._busy.acquire(blocking=False):
            raise BenchmarkBusyError("another benchmark is running on this device; try later")
        try:
            session = _session(spec.model, spec.threads, wire.providers_from_pb(spec.providers))
            _check_feed(session, feed)
            return _time(session, feed, runs=runs, warmup=warmup)
        finally:
            self._busy.release()


def _session(model: bytes, threads: int, preference: tuple[t.ExecutionProvider, ...] = ()) -> Any:
    if packing.is_packed(model):
        try:
            model = packing.decode(model)
        except packing.PackingError as exc:
            raise InvalidInputError(f"benchmark model: {exc}") from exc
    externaldata.refuse_external(model)  # ORT would read any file the model names

    def options() -> Any:
        made = ort.SessionOptions()
        made.log_severity_level = 3
        if threads:
            made.intra_op_num_threads = threads
            made.inter_op_num_threads = 1
        return made

    try:
        if not preference:
            return ort.InferenceSession(model, options(), providers=["CPUExecutionProvider"])
        with tempfile.TemporaryDirectory(prefix="edgefleet-benchmark-") as tmp:
            path = Path(tmp) / "model.onnx"
            path.write_bytes(model)
            return choosing.open_session(
                path, preference, slot_dir=Path(tmp), make_options=options
            ).session
    except Exception as exc:  # ORT raises its own classes, all plain Exceptions
        raise InvalidInputError(f"ONNX Runtime cannot load the benchmark model: {exc}") from exc


def _check_feed(session: Any, feed: Mapping[str, Array]) -> None:
    specs = [spec_of(a) for a in session.get_inputs()]
    expected = wire.describe_specs(specs)
    for name in feed:
        if name not in {s.name for s in specs}:
            raise InvalidInputError(f"unknown input {name!r}; the model takes {expected}")
    for s in specs:
        if s.name not in feed:
            raise InvalidInputError(f"missing input {s.name!r}; the model takes {expected}")
        if feed[s.name].dtype.name != s.dtype:
            raise InvalidInputError(
                f"input {s.name!r}: expected dtype {s.dtype}, got {feed[s.name].dtype.name}"
            )


def _time(session: Any, feed: Mapping[str, Array], *, runs: int, warmup: int) -> Timing:
    try:
        for _ in range(warmup):
            session.run(None, feed)
        took = np.empty(runs)
        for i in range(runs):
            started = time.perf_counter_ns()
            session.run(None, feed)
            took[i] = time.perf_counter_ns() - started
    except Exception as exc:  # ORT refused the feed (a shape) or failed on it
        raise InvalidInputError(f"the benchmark model refused the inputs: {exc}") from exc
    p50, p95, p99 = (v / 1e6 for v in percentiles(took, (50, 95, 99)))
    return Timing(p50, p95, p99, runs, ",".join(session.get_providers()), cpu_count())
