"""The fleet as this agent sees it, and the forwarding of a Predict it cannot serve itself.

``NeighbourTable`` is fed the retained presence messages of the agent's fleet
(``ef/v1/fleet/{f}/presence/+``, DESIGN.md section 3) on paho's thread: each one replaces that
device's row (online, endpoint, active release, when it was heard). A device that dies is marked
offline by its last will; one whose retained presence is cleared (empty payload) is forgotten.
This device's own presence and malformed payloads are ignored (the latter counted).

``Forwarder`` carries out server-side failover: ``failover.candidates`` orders the table, and
each candidate gets the request, marked forwarded, with a short deadline, until one answers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import grpc

from edgefleet.agent import failover
from edgefleet.agent.client import FAILOVER_CODES, Channels, code_of
from edgefleet.common import topics, wire
from edgefleet.common.errors import MalformedMessageError
from edgefleet.v1 import inference_pb2

log = logging.getLogger(__name__)


class NeighbourTable:
    def __init__(
        self, *, device_id: str, fleet: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.device_id = device_id
        self.fleet = fleet
        self._clock = clock
        self._lock = threading.Lock()
        self._rows: dict[str, failover.Neighbour] = {}
        self.malformed = 0
        """Presence messages of this fleet that did not parse or did not fit their topic."""

    @property
    def topic_filter(self) -> str:
        return topics.fleet_presence(self.fleet)

    def observe(self, topic: str, payload: bytes) -> bool:
        """Take one presence message; False when it was not for this table or was malformed."""
        try:
            parsed = topics.parse(topic)
        except MalformedMessageError:
            return False
        if parsed.channel != "presence" or parsed.fleet != self.fleet:
            return False
        if parsed.device_id == self.device_id:
            return True
        if not payload:  # retained presence cleared: the device left the fleet
            with self._lock:
                self._rows.pop(parsed.device_id, None)
            return True
        try:
            presence = wire.decode_presence(payload)
            if presence.device_id != parsed.device_id or presence.fleet != self.fleet:
                raise MalformedMessageError(
                    f"presence of {presence.device_id}/{presence.fleet} on {topic}"
                )
        except MalformedMessageError as exc:
            with self._lock:
                self.malformed += 1
            log.warning("ignoring presence on %s: %s", topic, exc)
            return False
        row = failover.Neighbour(
            device_id=presence.device_id,
            endpoint=presence.predict_endpoint if presence.online else "",
            release=presence.active_release,
            online=presence.online,
            last_seen=self._clock(),
        )
        with self._lock:
            self._rows[row.device_id] = row
        return True

    def snapshot(self) -> list[failover.Neighbour]:
        with self._lock:
            return sorted(self._rows.values(), key=lambda n: n.device_id)

    def online(self) -> list[failover.Neighbour]:
        return [n for n in self.snapshot() if n.online]

    def to_pb(self) -> list[inference_pb2.Neighbour]:
        return [
            inference_pb2.Neighbour(
                device_id=n.device_id, endpoint=n.endpoint, release=n.release, online=n.online
            )
            for n in self.snapshot()
        ]


class Forwarder:
    """Send a Predict this agent cannot serve to the best neighbour that answers."""

    def __init__(
        self,
        table: NeighbourTable,
        *,
        own: Callable[[], failover.OwnState],
        deadline: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.table = table
        self._own = own
        self._deadline = deadline
        self._clock = clock
        self._channels = Channels()
        self.forwarded = 0
        """Requests a neighbour served for this agent."""

    def forward(
        self, request: inference_pb2.PredictRequest, *, remaining: float | None = None
    ) -> tuple[inference_pb2.PredictResponse | None, list[str]]:
        """The first neighbour's answer (or None) and what was tried, for the error message.

        ``remaining``: the caller's own deadline left (seconds); no attempt outlives it.
        """
        own = self._own()
        order = failover.candidates(
            self.table.snapshot(), own=own, release=request.release, now=self._clock()
        )
        started = time.monotonic()
        tried: list[str] = []
        for n in order:
            timeout = self._deadline
            if remaining is not None:
                timeout = min(timeout, remaining - (time.monotonic() - started))
                if timeout <= 0.01:
                    tried.append(f"{n.device_id}: no time left")
                    break
            try:
                reply: inference_pb2.PredictResponse = self._channels.stub(n.endpoint).Predict(
                    request,
                    timeout=timeout,
                    metadata=((failover.FORWARDED_HEADER, own.device_id),),
                )
            except grpc.RpcError as exc:
                code = code_of(exc)
                tried.append(f"{n.device_id}: {code.name}")
                if code not in FAILOVER_CODES:
                    # the neighbour refused the request itself (bad input): so would the others
                    log.info("neighbour %s refused a forwarded Predict: %s", n.device_id, code)
                    break
                continue
            self.forwarded += 1
            reply.served_by_neighbour = True
            return reply, tried
        return None, tried

    def close(self) -> None:
        self._channels.close()
