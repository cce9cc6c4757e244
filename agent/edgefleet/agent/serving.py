"""The agent's gRPC face: ``InferenceService`` (Predict, ModelInfo, Benchmark) and
``grpc.health.v1``.

The servicer decodes tensors, calls ``Predictor`` and encodes the outputs; it also records
each request, so the in-process path stays bare. Recording on the hot path is a few C-level
calls (``sampling.Window``: in-flight set, latency deque; ``LiveStats.record``); Prometheus
and telemetry fold them when they read. Errors leave with the status ``rpc.status_for`` gives
them: INVALID_ARGUMENT naming the input, UNAVAILABLE while no model is active. Benchmark runs
``benchmarking.Benchmarker`` (signature refused: FAILED_PRECONDITION; one at a time:
RESOURCE_EXHAUSTED). Health says SERVING exactly while a model is active.

Limits (``ServingSettings``): a Predict arriving while ``max_concurrent`` are in flight is
answered RESOURCE_EXHAUSTED at once (checked against the in-flight set on entry, so racing
threads may pass it by a few, never by more than the worker threads); the server accepts at
most ``max_concurrent + CONTROL_RPCS`` calls of any kind (running or queued for a thread), and
no message over ``max_message_bytes`` either way (gRPC answers RESOURCE_EXHAUSTED itself).
Memory held by requests is so bounded by (``max_concurrent + CONTROL_RPCS``) x
``max_message_bytes``. A refusal for load is no failure of the model: it counts in
``edgefleet_inference_errors_total{reason="overloaded"}`` only. Input errors
(INVALID_ARGUMENT) count as failed requests in metrics and telemetry (those ONNX Runtime
refuses at run time in telemetry's ``refused`` only, outside its error rate), never as runtime
failures in a health window (``live.LiveStats.runtime_error`` takes ``InferenceFailedError``
only), so a caller's bad tensors cannot roll a release back: those the signature checks refuse
(``reason="invalid_argument"``) and those ONNX Runtime refuses at run time that ``blame`` puts
on the inputs (``RefusedInputError``, ``reason="invalid_input"``, ORT's message).

Failover (DESIGN.md section 1): when this agent cannot serve a Predict (no active model, or the
runtime failing) and a ``neighbours.Forwarder`` is wired, the request goes to a healthy
neighbour of the fleet, whose reply comes back with its device id and ``served_by_neighbour``.
A request that was itself forwarded (``x-edgefleet-forwarded`` metadata) is never forwarded
again; when no neighbour serves, UNAVAILABLE says so. ModelInfo lists the neighbours, which is
how ``client.FailoverClient`` learns where to go when the agent is down.

Listeners: the app listener (``--predict-listen``, loopback by default, plaintext) and the Unix
socket serve local apps. An enrolled agent also runs ``PeerServer`` (``--peer-listen``), mTLS
with its device certificate: a neighbour must present a certificate of the fleet CA naming
this fleet and a device on the signed roster (``PeerServicer``); that endpoint is the one it
advertises to the fleet, so forwarding between enrolled agents is mTLS both ways. The same
listener serves the agent's verified blobs to its fleet's devices (``PeerArtifactServicer``:
peer-to-peer downloads, admitted as a Predict is).
"""

from __future__ import annotations

import logging
import socket
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from pathlib import Path
from typing import Protocol, cast

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from edgefleet.agent import tensors
from edgefleet.agent.benchmarking import BenchmarkBusyError, Benchmarker
from edgefleet.agent.errors import InferenceFailedError, NoActiveModelError, RefusedInputError
from edgefleet.agent.failover import FORWARDED_HEADER
from edgefleet.agent.identity import IdentityFiles
from edgefleet.agent.live import LiveStats
from edgefleet.agent.metrics import AgentMetrics
from edgefleet.agent.neighbours import Forwarder
from edgefleet.agent.predictor import Predictor
from edgefleet.agent.runtime import ModelRuntime
from edgefleet.agent.sampling import FOLD_AT
from edgefleet.common import digests, identities, rpc, sharedmem, wire
from edgefleet.common.artifacts import DEFAULT_CHUNK, MAX_CHUNK, ArtifactServicer
from edgefleet.common.errors import EdgeFleetError, InvalidInputError
from edgefleet.v1 import artifact_pb2, artifact_pb2_grpc, inference_pb2, inference_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = "edgefleet.v1.InferenceService"
DEFAULT_MAX_CONCURRENT = 16
DEFAULT_MAX_MESSAGE_BYTES = 16 << 20
CONTROL_RPCS = 4
"""Calls the server accepts beyond ``max_concurrent``: room for health checks and ModelInfo."""
SOCKET_MODE = 0o660
"""The Unix socket's mode: the agent's user and group may call Predict through it."""
_WILDCARDS = {"", "0.0.0.0", "::"}  # noqa: S104 - recognising, not binding


def _reason(exc: EdgeFleetError) -> str:
    if isinstance(exc, RefusedInputError):
        return "invalid_input"
    if isinstance(exc, InvalidInputError):
        return "invalid_argument"
    if isinstance(exc, NoActiveModelError):
        return "no_model"
    if isinstance(exc, InferenceFailedError):
        return "runtime"
    return "other"


class Refused(Exception):
    """A Predict that is answered with an error: ``code`` and ``message`` are what the caller
    gets, over gRPC (``context.abort``) or the fast local path (its error frame)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Caller(Protocol):
    """What ``InferenceServicer.serve`` asks of the transport a request came by."""

    def local(self) -> bool:
        """Whether the request came over the agent's own Unix socket (shared memory allowed)."""

    def peer(self) -> str:
        """Who called, for messages."""

    def forwarded(self) -> bool:
        """Whether a neighbour or a failover client forwarded it (never forwarded again)."""

    def time_remaining(self) -> float | None:
        """Seconds left of the caller's deadline; None: none given."""


class _GrpcCaller:
    """``Caller`` of a gRPC call (its peer, metadata and deadline, read only when asked)."""

    __slots__ = ("_context",)

    def __init__(self, context: grpc.ServicerContext) -> None:
        self._context = context

    def local(self) -> bool:
        return self.peer().startswith("unix:")

    def peer(self) -> str:
        return self._context.peer()

    def forwarded(self) -> bool:
        return dict(self._context.invocation_metadata()).get(FORWARDED_HEADER) is not None

    def time_remaining(self) -> float | None:
        return self._context.time_remaining()


def _with_data(
    request: inference_pb2.PredictRequest, data: Sequence[tensors.Buffer] | None
) -> inference_pb2.PredictRequest:
    """``request`` with the inputs' bytes held apart put back in (what a neighbour needs): a
    copy, ``request`` itself may be served again (``fastserver``'s plans keep theirs)."""
    if data is None:
        return request
    full = inference_pb2.PredictRequest()
    full.CopyFrom(request)
    for tensor, raw in zip(full.inputs, data, strict=True):
        tensor.data = bytes(raw)
    return full


def _check_local(caller: Caller) -> None:
    """Shared memory is this device's: a request naming a region must come over the socket."""
    if not caller.local():
        raise InvalidInputError(
            f"shared_inputs are accepted only over the agent's Unix socket, not from "
            f"{caller.peer()}: send the tensors inline"
        )


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(
        self,
        predictor: Predictor,
        *,
        device_id: str,
        fleet: str,
        metrics: AgentMetrics,
        live: LiveStats | None = None,
        benchmarker: Benchmarker | None = None,
        forwarder: Forwarder | None = None,
        timer: Callable[[], float] = time.perf_counter,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
    ) -> None:
        self._predictor = predictor
        self._max_concurrent = max_concurrent
        self._timer = timer  # times each Predict for the live p95 and the metrics
        self._device_id = device_id
        self._fleet = fleet
        self._metrics = metrics
        self._live = live or LiveStats()
        self._benchmarker = benchmarker
        self._forwarder = forwarder
        # the hot path's recording: bound C methods, looked up once
        window = metrics.window
        self._window = window
        self._in_flight = window.in_flight
        self._enter, self._leave = window.in_flight.add, window.in_flight.discard
        self._pending, self._sample = window.pending, window.pending.append
        self._scratch = sharedmem.Scratch()  # shared inputs land in reused memory

    def Predict(
        self, request: inference_pb2.PredictRequest, context: grpc.ServicerContext
    ) -> inference_pb2.PredictResponse:
        try:
            return self.serve(request, _GrpcCaller(context))
        except Refused as exc:
            context.abort(exc.code, exc.message)
            raise AssertionError("unreachable: abort raises") from None

    def serve(
        self,
        request: inference_pb2.PredictRequest,
        caller: Caller,
        data: Sequence[tensors.Buffer] | None = None,
        *,
        arrays: dict[str, tensors.Array] | None = None,
    ) -> inference_pb2.PredictResponse:
        """Predict's core, whatever the transport (gRPC, ``fastpath``): the reply, or
        ``Refused`` with the status code and message the caller gets. ``data[i]``: the bytes
        of ``request.inputs[i]`` where the transport holds them apart (read in place);
        ``arrays``: those inputs already decoded (by name) from ``request`` and ``data``, by a
        transport that decoded the same tensors before (``fastserver``'s plans)."""
        if len(self._in_flight) >= self._max_concurrent:
            self._metrics.errors.labels("overloaded").inc()
            raise Refused(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"device {self._device_id} is serving its limit of {self._max_concurrent} "
                "concurrent Predict calls (predict_max_concurrent); retry later",
            )
        started = self._timer()
        key = id(request)  # unique among requests being served: each is alive till it ends
        self._enter(key)
        runtime: ModelRuntime | None = None
        try:
            runtime = self._predictor.require()
            if arrays is None:
                arrays = tensors.decode_all(request.inputs, data)
            if request.shared_inputs:  # a local caller's tensors in shared memory
                _check_local(caller)
                sharedmem.read_all(request.shared_inputs, into=arrays, scratch=self._scratch)
            outputs = runtime.predict(arrays, request.output_names)
            reply = inference_pb2.PredictResponse(
                release=runtime.release, device_id=self._device_id
            )
            tensors.add_all(reply.outputs, outputs)
        except EdgeFleetError as exc:
            self._failed(exc, runtime, self._timer() - started)
            if isinstance(exc, NoActiveModelError | InferenceFailedError):
                return self._fail_over(_with_data(request, data), caller, exc)
            raise Refused(rpc.status_for(exc), str(exc)) from exc
        finally:
            self._leave(key)
        elapsed = self._timer() - started
        self._sample(elapsed)
        if len(self._pending) > FOLD_AT:  # nobody reads (metrics off): keep memory bounded
            self._window.fold()
        self._live.record(runtime.release, elapsed)
        return reply

    def _fail_over(
        self,
        request: inference_pb2.PredictRequest,
        caller: Caller,
        exc: EdgeFleetError,
    ) -> inference_pb2.PredictResponse:
        """Serve ``request`` on a neighbour, or refuse as ``exc`` calls for, saying none could."""
        if self._forwarder is None or caller.forwarded():
            raise Refused(rpc.status_for(exc), str(exc)) from exc
        if request.shared_inputs:  # a neighbour cannot read this device's shared memory
            try:
                _check_local(caller)
                request = sharedmem.inlined(request)
            except InvalidInputError as bad:
                raise Refused(rpc.status_for(bad), str(bad)) from bad
        reply, tried = self._forwarder.forward(request, remaining=caller.time_remaining())
        if reply is not None:
            log.debug("Predict served by neighbour %s (%s)", reply.device_id, exc)
            return reply
        # the code stays what this agent's own failure calls for (UNAVAILABLE, INTERNAL)
        raise Refused(
            rpc.status_for(exc),
            f"{exc}, and no neighbour is available to serve it"
            + (f" (tried {', '.join(tried)})" if tried else " (none online in the fleet)"),
        ) from exc

    def _failed(self, exc: EdgeFleetError, runtime: ModelRuntime | None, elapsed: float) -> None:
        self._metrics.errors.labels(_reason(exc)).inc()
        self._window.record(elapsed, ok=False, refused=isinstance(exc, RefusedInputError))
        if isinstance(exc, InferenceFailedError) and runtime is not None:
            self._live.runtime_error(runtime.release, str(exc))

    def Benchmark(
        self, request: inference_pb2.BenchmarkRequest, context: grpc.ServicerContext
    ) -> inference_pb2.BenchmarkResponse:
        if self._benchmarker is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "benchmarking is off on this agent")
            raise AssertionError("unreachable: abort raises")
        try:
            timing = self._benchmarker.run(request)
        except BenchmarkBusyError as exc:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            raise  # unreachable: abort raises
        except EdgeFleetError as exc:
            log.info("benchmark refused: %s", exc)
            rpc.abort(context, exc)
            raise  # unreachable: abort raises
        log.info("benchmark: %d runs, p50 %.3f ms", timing.runs, timing.p50_ms)
        return inference_pb2.BenchmarkResponse(
            p50_ms=timing.p50_ms,
            p95_ms=timing.p95_ms,
            p99_ms=timing.p99_ms,
            runs=timing.runs,
            device_id=self._device_id,
            providers=timing.providers,
            cpu_count=timing.cpu_count,
        )

    def ModelInfo(
        self, request: inference_pb2.ModelInfoRequest, context: grpc.ServicerContext
    ) -> inference_pb2.ModelInfoResponse:
        reply = inference_pb2.ModelInfoResponse(device_id=self._device_id, fleet=self._fleet)
        runtime = self._predictor.current
        if runtime is not None:
            reply.release = runtime.release
            reply.manifest_digest = runtime.model.manifest_digest
            reply.inputs.extend(wire.spec_to_pb(s) for s in runtime.inputs)
            reply.outputs.extend(wire.spec_to_pb(s) for s in runtime.outputs)
        if self._forwarder is not None:
            reply.neighbours.extend(self._forwarder.table.to_pb())
        return reply


def advertised(host: str, port: int) -> str:
    """The address neighbours and apps should dial: a wildcard bind advertises the host name."""
    host = host.strip("[]")
    if host in _WILDCARDS:
        host = socket.gethostname()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def clear_stale(path: Path, *, flag: str = "--predict-socket") -> None:
    """Remove a socket file a killed agent left; refuse a live one and anything else (the
    message names ``flag``, the option that chose ``path``)."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise InvalidInputError(f"{flag} {path}: exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        path.unlink(missing_ok=True)  # nobody listens: stale
        return
    except OSError:
        return  # gone meanwhile, or not ours to judge: the bind says
    finally:
        probe.close()
    raise InvalidInputError(f"{flag} {path}: another process serves on it")


def _bind_socket(server: grpc.Server, path: Path) -> str:
    """Add the Unix socket to ``server`` (not started yet, so nothing is served before the
    mode is set); return its ``unix:PATH`` endpoint."""
    clear_stale(path)
    endpoint = f"unix:{path}"
    try:
        bound = server.add_insecure_port(endpoint)
    except RuntimeError as exc:
        raise InvalidInputError(f"cannot listen on {endpoint}: {exc}") from exc
    if bound == 0:
        raise InvalidInputError(f"cannot listen on {endpoint}")
    path.chmod(SOCKET_MODE)
    log.info("Predict listening on %s", endpoint)
    return endpoint


class InferenceServer:
    def __init__(
        self,
        servicer: InferenceServicer,
        *,
        listen: str,
        workers: int = 8,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        socket_path: Path | None = None,
    ) -> None:
        self._listen = listen
        self._socket_path = socket_path
        self.socket_endpoint: str | None = None
        """``unix:PATH`` once serving on the Unix socket; None without one."""
        self._pool = futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="agent-predict"
        )
        self._server = grpc.server(
            self._pool,
            options=[
                ("grpc.so_reuseport", 0),  # a fixed port taken by another agent must fail
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
            ],
            maximum_concurrent_rpcs=max_concurrent + CONTROL_RPCS,
        )
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, self._server)
        self._health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        self.set_serving(False)

    def start(self) -> str:
        """Bind and start; return the advertised ``host:port``."""
        host, _, port = self._listen.rpartition(":")
        try:
            bound = self._server.add_insecure_port(self._listen)
        except RuntimeError as exc:
            raise InvalidInputError(f"cannot listen on {self._listen}: {exc}") from exc
        if bound == 0 and port != "0":
            raise InvalidInputError(f"cannot listen on {self._listen}")
        if self._socket_path is not None:
            self.socket_endpoint = _bind_socket(self._server, self._socket_path)
        self._server.start()
        endpoint = advertised(host, bound)
        log.info("Predict listening on %s (advertised as %s)", self._listen, endpoint)
        return endpoint

    def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME):
            self._health.set(name, status)

    def stop(self, *, grace: float = 2.0) -> None:
        self._health.enter_graceful_shutdown()
        self._server.stop(grace).wait(grace + 1)
        self._pool.shutdown(wait=False)  # grpc leaves its workers running, one per stopped agent


class PeerServicer(inference_pb2_grpc.InferenceServiceServicer):
    """Predict for neighbours, on the mTLS peer listener: the handshake proved a certificate of
    the fleet CA; this checks it names this device's fleet and a device ``listed`` (on the
    signed roster, once one is held), then serves as the app listener does (forwarded requests
    are never forwarded again). Everything else is refused PERMISSION_DENIED."""

    def __init__(
        self, inner: InferenceServicer, *, fleet: str, listed: Callable[[str], bool]
    ) -> None:
        self._inner = inner
        self._fleet = fleet
        self._listed = listed
        self.refused = 0
        """Calls refused: no certificate, another fleet's, or a device not on the roster."""

    def Predict(
        self, request: inference_pb2.PredictRequest, context: grpc.ServicerContext
    ) -> inference_pb2.PredictResponse:
        self._check(context)
        return self._inner.Predict(request, context)

    def ModelInfo(
        self, request: inference_pb2.ModelInfoRequest, context: grpc.ServicerContext
    ) -> inference_pb2.ModelInfoResponse:
        self._check(context, controller=True)
        return self._inner.ModelInfo(request, context)

    def Benchmark(
        self, request: inference_pb2.BenchmarkRequest, context: grpc.ServicerContext
    ) -> inference_pb2.BenchmarkResponse:
        """The controller's (``--profile-on``; the spec is signed as everywhere), not a peer's."""
        self._check(context, controller=True, peers=False)
        return self._inner.Benchmark(request, context)

    def check_peer(self, context: grpc.ServicerContext) -> None:
        """Abort PERMISSION_DENIED unless the caller is a device of this fleet on the roster."""
        self._check(context)

    def _check(
        self, context: grpc.ServicerContext, *, controller: bool = False, peers: bool = True
    ) -> None:
        """Admit a fleet peer on the roster (``peers``) or the controller's own client
        certificate (``controller``: CN ``CONTROLLER_IDENTITY``, no device may hold it)."""
        pem = rpc.peer_certificate(context)
        reason = ""
        if pem is None:
            reason = "no client certificate"
        else:
            try:
                ident = identities.identity_of(identities.load_cert(pem))
            except InvalidInputError as exc:
                reason = str(exc)
            else:
                if ident.device_id == identities.CONTROLLER_IDENTITY and not ident.fleet:
                    if not controller:
                        reason = "the controller does not call Predict here"
                elif not peers:
                    reason = f"{ident.device_id} is a device: only the controller may call this"
                elif ident.fleet != self._fleet:
                    reason = f"{ident.device_id} is in fleet {ident.fleet!r}, not {self._fleet!r}"
                elif not self._listed(ident.device_id):
                    reason = f"{ident.device_id} is not on the fleet roster"
        if reason:
            self.refused += 1
            log.warning("peer call from %s refused: %s", context.peer(), reason)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"peer refused: {reason}")


class PeerArtifactServicer(artifact_pb2_grpc.ArtifactServiceServicer):
    """The blobs this agent holds, for the devices of its fleet (peer-to-peer downloads), on the
    mTLS peer listener: ``check`` admits a caller as ``PeerServicer`` admits a Predict (the
    fleet's CA, this fleet, on the roster), then it serves, read-only, what is in the agent's
    verified blob store (``inner``: model and golden blobs, each re-hashed against its name
    before it is served) or a model chunk its slots hold (``chunk(digest)``: the chunk's bytes,
    already checked against the digest, or None); nothing else on its disk. The fetching device
    checks the signed digest anyway: a peer is a cache, never trusted."""

    def __init__(
        self,
        inner: ArtifactServicer,
        *,
        check: Callable[[grpc.ServicerContext], None],
        chunk: Callable[[str], bytes | None] = lambda _d: None,
    ) -> None:
        self._inner = inner
        self._store = inner.store
        self._check = check
        self._chunk = chunk
        self.served_bytes = 0
        """Blob and chunk bytes sent to peers."""

    def _held_chunk(self, digest: str) -> bytes | None:
        """A chunk's verified bytes when the blob store lacks ``digest`` as a whole blob."""
        try:
            if self._store.has(digests.validate(digest)):
                return None
        except InvalidInputError:
            return None
        return self._chunk(digest)

    def Stat(
        self, request: artifact_pb2.StatRequest, context: grpc.ServicerContext
    ) -> artifact_pb2.BlobInfo:
        self._check(context)
        data = self._held_chunk(request.digest)
        if data is not None:
            return artifact_pb2.BlobInfo(digest=request.digest, size=len(data))
        return self._inner.Stat(request, context)

    def Fetch(
        self, request: artifact_pb2.FetchRequest, context: grpc.ServicerContext
    ) -> Iterator[artifact_pb2.BlobChunk]:
        self._check(context)
        data = self._held_chunk(request.digest)
        replies = (
            self._inner.Fetch(request, context) if data is None else _slices(data, request, context)
        )
        for reply in replies:
            self.served_bytes += len(reply.data)
            yield reply


def _slices(
    data: bytes, request: artifact_pb2.FetchRequest, context: grpc.ServicerContext
) -> Iterator[artifact_pb2.BlobChunk]:
    """``data`` from ``request.offset`` in messages of the requested chunk size."""
    total = len(data)
    if request.offset > total:
        context.abort(grpc.StatusCode.OUT_OF_RANGE, f"offset {request.offset} past size {total}")
    step = min(request.chunk_size or DEFAULT_CHUNK, MAX_CHUNK)
    for offset in range(request.offset, total, step):
        yield artifact_pb2.BlobChunk(
            offset=offset, data=data[offset : offset + step], total_size=total
        )


class _ReloadingCredentials:
    """The peer listener's certificate, re-read from the identity files when they change
    (a renewal), for ``grpc.dynamic_ssl_server_credentials``."""

    def __init__(self, files: IdentityFiles) -> None:
        self._files = files
        self._seen = self._stamp()

    def _stamp(self) -> tuple[float, float]:
        return (self._files.cert.stat().st_mtime, self._files.ca.stat().st_mtime)

    def config(self) -> grpc.ServerCertificateConfiguration:
        tls = self._files.client_tls()
        assert tls.key_pem is not None and tls.cert_pem is not None
        return grpc.ssl_server_certificate_configuration(
            [(tls.key_pem, tls.cert_pem)], root_certificates=tls.ca_pem
        )

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        try:
            stamp = self._stamp()
            if stamp == self._seen:
                return None
            config = self.config()
        except OSError:  # mid-rename: keep what is served
            return None
        self._seen = stamp
        log.info("peer listener: serving the renewed certificate")
        return config


class PeerServer:
    """The mTLS listener neighbours forward to (enrolled agents): ``PeerServicer``, and
    ``PeerArtifactServicer`` when given (``artifacts``: the blobs peers may download)."""

    def __init__(
        self,
        servicer: PeerServicer,
        *,
        listen: str,
        files: IdentityFiles,
        artifacts: PeerArtifactServicer | None = None,
        workers: int = 4,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self._listen = listen
        self._files = files
        self._pool = futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="agent-peer"
        )
        self._server = grpc.server(
            self._pool,
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
            ],
            maximum_concurrent_rpcs=max_concurrent + CONTROL_RPCS,
        )
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, self._server)
        if artifacts is not None:
            artifact_pb2_grpc.add_ArtifactServiceServicer_to_server(artifacts, self._server)

    def start(self) -> str:
        """Bind (mTLS, the identity's key, certificate and CA) and start; the advertised
        ``host:port``."""
        host, _, port = self._listen.rpartition(":")
        reload = _ReloadingCredentials(self._files)
        # grpcio's stub says the fetcher returns a configuration; None (no change) is allowed
        fetcher = cast(Callable[[], grpc.ServerCertificateConfiguration], reload)
        credentials = grpc.dynamic_ssl_server_credentials(
            reload.config(), fetcher, require_client_authentication=True
        )
        try:
            bound = self._server.add_secure_port(self._listen, credentials)
        except RuntimeError as exc:
            raise InvalidInputError(f"cannot listen on {self._listen}: {exc}") from exc
        if bound == 0 and port != "0":
            raise InvalidInputError(f"cannot listen on {self._listen}")
        self._server.start()
        endpoint = advertised(host, bound)
        log.info("peer Predict (mTLS) listening on %s (advertised as %s)", self._listen, endpoint)
        return endpoint

    def stop(self, *, grace: float = 2.0) -> None:
        self._server.stop(grace).wait(grace + 1)
        self._pool.shutdown(wait=False)
