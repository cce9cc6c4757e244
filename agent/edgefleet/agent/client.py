"""A Predict client for local apps that survives its agent going down (client-side failover).

``FailoverClient(endpoint)`` calls the local agent. Every ``neighbours_refresh`` seconds (and
on first use) it asks the agent's ``ModelInfo`` for the fleet's neighbours and caches them; when
the local agent does not answer (UNAVAILABLE, DEADLINE_EXCEEDED) it tries those neighbours in
``failover.candidates`` order, each with a short deadline, and marks the requests forwarded so
a neighbour that cannot serve either answers UNAVAILABLE at once instead of forwarding again.
When the agent is up but cannot serve, the agent itself forwards (server-side failover).

On the device itself, give the agent's Unix socket (``local_socket=DATA_DIR/predict.sock``, or
an ``endpoint`` of ``unix:PATH``): the local agent is called through it, and inputs of at least
``shm_threshold`` bytes travel through POSIX shared memory (``sharedmem.Stager``) instead of
inside the message; neighbours are always called over TCP, with every input inline.

Beside that socket the agent serves its fast local path (``edgefleet.common.fastpath``: the
same Predict without gRPC, ``DATA_DIR/predict.fast.sock``; inputs of at least
``shm_threshold`` bytes in a memfd region each connection registers once and reuses, which
the model reads in place: ``fastpath.FastPathClient.predict_arrays``); a local client calls
Predict there first (``fast_socket``), and over the gRPC socket when the fast one cannot be
reached (an agent with it off, or an older one), trying the fast one again ``FAST_RETRY_S``
later. ModelInfo (the neighbour list) always goes over gRPC.

``Channels`` (one gRPC channel per endpoint, kept open) is shared with the agent's forwarder.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import grpc
import numpy as np

from edgefleet.agent import failover
from edgefleet.common import fastpath, rpc, sharedmem, wire
from edgefleet.common.closing import Closing
from edgefleet.common.errors import TransientError
from edgefleet.v1 import inference_pb2, inference_pb2_grpc

log = logging.getLogger(__name__)

FAST_RETRY_S = 5.0
"""After the fast local path could not be reached, how long Predict goes over gRPC instead."""
FAILOVER_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
"""Status codes after which another device may succeed where this one did not."""


class NoDeviceAvailableError(TransientError):
    """Neither the local agent nor any neighbour served the request."""

    def __init__(self, message: str, *, tried: Sequence[str]) -> None:
        super().__init__(message)
        self.tried = tuple(tried)


def code_of(exc: grpc.RpcError) -> grpc.StatusCode:
    code = getattr(exc, "code", None)
    return code() if callable(code) else grpc.StatusCode.UNKNOWN


def neighbours_from_pb(
    msgs: Sequence[inference_pb2.Neighbour], *, seen: float
) -> list[failover.Neighbour]:
    return [
        failover.Neighbour(
            device_id=m.device_id,
            endpoint=m.endpoint,
            release=m.release,
            online=m.online,
            last_seen=seen,
        )
        for m in msgs
    ]


_Entry = tuple[grpc.Channel, inference_pb2_grpc.InferenceServiceStub, "rpc.ClientTls | None"]


class Channels:
    """Open gRPC channels by endpoint, so a failover costs no connection set-up twice.

    ``tls(device_id)``: how to reach that device (an enrolled agent's forwarder: mTLS with its
    identity, the server's certificate checked for ``device_id``); None: plaintext. A channel
    whose credentials changed (a renewal) is replaced.
    """

    def __init__(self, *, tls: Callable[[str], rpc.ClientTls | None] = lambda _d: None) -> None:
        self._lock = threading.Lock()
        self._tls = tls
        self._stubs: dict[tuple[str, str], _Entry] = {}

    def stub(self, endpoint: str, device_id: str = "") -> inference_pb2_grpc.InferenceServiceStub:
        tls = self._tls(device_id) if device_id else None
        stale: grpc.Channel | None = None
        with self._lock:
            entry = self._stubs.get((endpoint, device_id))
            if entry is not None and entry[2] != tls:
                stale, entry = entry[0], None
            if entry is None:
                channel = rpc.channel(endpoint, tls=tls)
                entry = (channel, inference_pb2_grpc.InferenceServiceStub(channel), tls)
                self._stubs[(endpoint, device_id)] = entry
        if stale is not None:
            stale.close()
        return entry[1]

    def close(self) -> None:
        with self._lock:
            entries, self._stubs = list(self._stubs.values()), {}
        for channel, _, _ in entries:
            channel.close()


def request_for(
    inputs: Mapping[str, np.ndarray], *, output_names: Sequence[str] = (), release: str = ""
) -> inference_pb2.PredictRequest:
    return inference_pb2.PredictRequest(
        inputs=[wire.array_to_pb(name, array) for name, array in inputs.items()],
        output_names=list(output_names),
        release=release,
    )


class FailoverClient(Closing):
    """Predict on the local agent, or on a neighbour of its fleet when the agent is down."""

    def __init__(
        self,
        endpoint: str,
        *,
        local_socket: str | Path | None = None,
        fast_socket: str | Path | None = None,
        shm_threshold: int | None = sharedmem.DEFAULT_THRESHOLD,
        neighbours_refresh: float = 30.0,
        deadline: float = 5.0,
        failover_deadline: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        peer_tls: Callable[[str], rpc.ClientTls | None] = lambda _d: None,
    ) -> None:
        """``local_socket``: the local agent's Unix socket, used instead of ``endpoint``;
        ``shm_threshold``: inputs of at least this many bytes go through shared memory on a
        Unix socket (None: never); ``fast_socket``: the agent's ``--predict-fast-socket`` (None:
        ``predict.fast.sock`` beside the Unix socket when the client is local, else none; "":
        never the fast path); ``peer_tls(device_id)``: credentials for neighbours whose
        agents are enrolled (they advertise their mTLS peer listener), e.g.
        ``IdentityFiles(...).client_tls(server_name=device_id)`` where the app may read them."""
        self.endpoint = f"unix:{Path(local_socket).absolute()}" if local_socket else endpoint
        self._stager = sharedmem.stager_for(self.endpoint, threshold=shm_threshold)
        local = sharedmem.socket_path(self.endpoint)
        fast: Path | None = None
        if fast_socket is None:
            fast = fastpath.sibling(local) if local is not None else None
        elif fast_socket:
            fast = Path(fast_socket).absolute()
        self.fast_endpoint = f"unix:{fast}" if fast is not None else None
        """The fast local path tried first for Predict; None: gRPC only."""
        self._fast = (
            fastpath.FastPathClient(fast, deadline=deadline, shm_threshold=shm_threshold)
            if fast
            else None
        )
        self._fast_off_until = float("-inf")
        self.paths: Counter[str] = Counter()
        """Predict calls answered by each way: "fast", "grpc" (the endpoint), "neighbour"."""
        self._refresh_every = neighbours_refresh
        self._deadline = deadline
        self._failover_deadline = failover_deadline
        self._clock = clock
        self._channels = Channels(tls=peer_tls)
        self._lock = threading.Lock()
        self._own = failover.OwnState(device_id="")
        self._neighbours: list[failover.Neighbour] = []
        self._refreshed_at: float | None = None

    def close(self) -> None:
        self._channels.close()
        if self._fast is not None:
            self._fast.close()
        if self._stager is not None:
            self._stager.close()

    @property
    def neighbours(self) -> list[failover.Neighbour]:
        """The cached neighbour list (as of the last successful refresh)."""
        with self._lock:
            return list(self._neighbours)

    def refresh(self) -> inference_pb2.ModelInfoResponse:
        """Ask the local agent for its model and neighbours; cache the neighbours."""
        info: inference_pb2.ModelInfoResponse = self._channels.stub(self.endpoint).ModelInfo(
            inference_pb2.ModelInfoRequest(), timeout=self._deadline
        )
        now = self._clock()
        with self._lock:
            self._own = failover.OwnState(device_id=info.device_id, active_release=info.release)
            self._neighbours = neighbours_from_pb(info.neighbours, seen=now)
            self._refreshed_at = now
        return info

    def predict(
        self,
        inputs: Mapping[str, np.ndarray] | inference_pb2.PredictRequest,
        *,
        output_names: Sequence[str] = (),
        release: str = "",
    ) -> inference_pb2.PredictResponse:
        """One Predict; ``NoDeviceAvailableError`` when no device of the fleet could serve it."""
        self._maybe_refresh()
        try:
            reply = self._local(inputs, output_names, release)
        except grpc.RpcError as exc:
            if code_of(exc) not in FAILOVER_CODES:
                raise
            where = self.fast_endpoint if isinstance(exc, fastpath.FastPathError) else None
            first = f"{where or self.endpoint}: {code_of(exc).name}"
        else:
            return reply
        request = (
            sharedmem.inlined(inputs)  # a neighbour cannot read this device's shared memory
            if isinstance(inputs, inference_pb2.PredictRequest)
            else request_for(inputs, output_names=output_names, release=release)
        )
        return self._fail_over(request, tried=[first])

    def _local(
        self,
        inputs: Mapping[str, np.ndarray] | inference_pb2.PredictRequest,
        output_names: Sequence[str],
        release: str,
    ) -> inference_pb2.PredictResponse:
        """Predict on the local agent: its fast path where it has one that answers, else gRPC."""
        fast = self._fast
        if fast is not None and self._clock() >= self._fast_off_until:
            reply: inference_pb2.PredictResponse
            try:
                reply = self._fast_call(fast, inputs, output_names, release)
            except fastpath.FastPathError as exc:
                if exc.answered or exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise  # the agent's answer, or a hung agent: not worth asking twice
                log.debug("fast path %s: %s; Predict over gRPC", self.fast_endpoint, exc)
                self._fast_off_until = self._clock() + FAST_RETRY_S
            else:
                self.paths["fast"] += 1
                return reply
        stub = self._channels.stub(self.endpoint)
        if isinstance(inputs, inference_pb2.PredictRequest):
            reply = stub.Predict(inputs, timeout=self._deadline)
        elif self._stager is not None:  # the large inputs through shared memory
            with self._stager.request(inputs, output_names=output_names, release=release) as staged:
                reply = stub.Predict(staged, timeout=self._deadline)
        else:
            reply = stub.Predict(
                request_for(inputs, output_names=output_names, release=release),
                timeout=self._deadline,
            )
        self.paths["grpc"] += 1
        return reply

    def _fast_call(
        self,
        fast: fastpath.FastPathClient,
        inputs: Mapping[str, np.ndarray] | inference_pb2.PredictRequest,
        output_names: Sequence[str],
        release: str,
    ) -> inference_pb2.PredictResponse:
        if isinstance(inputs, inference_pb2.PredictRequest):
            return fast.predict(inputs)
        # the large inputs in the connection's registered region, the others inline (the
        # arrays' own buffers are sent, not copied into a message first)
        return fast.predict_arrays(inputs, output_names=output_names, release=release)

    def _maybe_refresh(self) -> None:
        at = self._refreshed_at
        if at is not None and self._clock() - at < self._refresh_every:
            return
        try:
            self.refresh()
        except grpc.RpcError as exc:
            if code_of(exc) not in FAILOVER_CODES:
                raise
            # agent down: keep the cached neighbours, try again on the next call

    def _fail_over(
        self, request: inference_pb2.PredictRequest, *, tried: list[str]
    ) -> inference_pb2.PredictResponse:
        with self._lock:
            own, known = self._own, list(self._neighbours)
        order = failover.candidates(known, own=own, release=request.release, now=self._clock())
        metadata = ((failover.FORWARDED_HEADER, "client"),)
        for n in order:
            try:
                reply: inference_pb2.PredictResponse = self._channels.stub(
                    n.endpoint, n.device_id
                ).Predict(request, timeout=self._failover_deadline, metadata=metadata)
            except grpc.RpcError as exc:
                if code_of(exc) not in FAILOVER_CODES:
                    raise
                tried.append(f"{n.device_id}@{n.endpoint}: {code_of(exc).name}")
                continue
            reply.served_by_neighbour = True
            self.paths["neighbour"] += 1
            return reply
        raise NoDeviceAvailableError(
            f"no device available: the agent at {self.endpoint} did not answer and "
            f"{'no neighbour is known' if not order else 'no neighbour could serve'} "
            f"(tried {'; '.join(tried)})",
            tried=tried,
        )
