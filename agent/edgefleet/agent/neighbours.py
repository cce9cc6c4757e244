"""The fleet as this agent sees it, and the forwarding of a Predict it cannot serve itself.

``NeighbourTable`` is fed the retained presence messages of the agent's fleet
(``ef/v1/fleet/{f}/presence/+``, DESIGN.md section 3) on paho's thread: each one replaces that
device's row (online, endpoint, active release, when it was heard). A device that dies is marked
offline by its last will; one whose retained presence is cleared (empty payload) is forgotten.
This device's own presence and malformed payloads are ignored (the latter counted).

Presence is self-asserted, so failover does not take it on its own word: the controller's
signed fleet roster (``ef/v1/fleet/{f}/roster``, ``trustbundle.open_roster``) lists the devices
of the fleet by the registry and the Predict endpoint each reported in its own status. Once a
roster is held (or ``require_roster`` is set) a presence is used only when its device is on the
roster at the endpoint the roster lists; any other is kept aside (a roster that catches up with a
restarted device's new endpoint promotes it), counted in ``forged``, and never forwarded to. The
roster is persisted (``roster.signed``), so a restart keeps enforcing it; an older one is
refused.

``Forwarder`` carries out server-side failover: ``failover.candidates`` orders the table, and
each candidate gets the request, marked forwarded, with a short deadline, until one answers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from edgefleet.agent import failover
from edgefleet.agent.client import FAILOVER_CODES, Channels, code_of
from edgefleet.common import rpc, topics, trustbundle, wire
from edgefleet.common.artifacts import atomic_write
from edgefleet.common.errors import EdgeFleetError, MalformedMessageError
from edgefleet.common.signing import TrustStore
from edgefleet.common.trustbundle import Roster, StaleBundleError
from edgefleet.v1 import inference_pb2

log = logging.getLogger(__name__)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class NeighbourTable:
    def __init__(
        self,
        *,
        device_id: str,
        fleet: str,
        clock: Callable[[], float] = time.monotonic,
        trust: TrustStore | None = None,
        roster_file: Path | None = None,
        require_roster: bool = False,
        clock_ms: Callable[[], int] = _now_ms,
    ) -> None:
        """``trust``: the keys a roster must be signed by (None: rosters are not taken)."""
        self.device_id = device_id
        self.fleet = fleet
        self._clock = clock
        self._clock_ms = clock_ms
        self._trust = trust
        self._roster_file = roster_file
        self._require_roster = require_roster
        self._lock = threading.Lock()
        self._rows: dict[str, failover.Neighbour] = {}
        self._aside: dict[str, tuple[failover.Neighbour, str]] = {}  # (row, claimed endpoint)
        self.roster: Roster | None = None
        self.malformed = 0
        """Presence messages of this fleet that did not parse or did not fit their topic."""
        self.forged = 0
        """Presences of a device the roster does not list, or at an endpoint it does not list."""
        self.rosters_rejected = 0
        """Rosters refused: bad or unknown signature, another fleet's, older than the one held."""

    @property
    def topic_filter(self) -> str:
        return topics.fleet_presence(self.fleet)

    @property
    def roster_topic(self) -> str:
        return topics.roster(self.fleet)

    @property
    def enforcing(self) -> bool:
        return self.roster is not None or self._require_roster

    def load_roster(self) -> Roster | None:
        """The roster kept from an earlier run, if it still verifies (start-up)."""
        if self._roster_file is None or self._trust is None:
            return None
        try:
            data = self._roster_file.read_bytes()
            roster = trustbundle.open_roster(
                data, self._trust, fleet=self.fleet, now_ms=self._clock_ms(), held_ms=0
            )
        except FileNotFoundError:
            return None
        except EdgeFleetError as exc:
            log.warning("stored roster %s does not verify: %s", self._roster_file, exc)
            return None
        with self._lock:
            self._adopt(roster)
        return roster

    def observe_roster(self, payload: bytes) -> bool:
        """Take a signed roster of this fleet; False when it was refused (or a redelivery)."""
        if self._trust is None or not payload:
            return False
        with self._lock:
            held = self.roster.issued_at_ms if self.roster is not None else 0
            try:
                roster = trustbundle.open_roster(
                    payload, self._trust, fleet=self.fleet, now_ms=self._clock_ms(), held_ms=held
                )
            except StaleBundleError as exc:
                if exc.version != exc.held:
                    self.rosters_rejected += 1
                    log.warning("roster refused: %s", exc)
                return False
            except EdgeFleetError as exc:
                self.rosters_rejected += 1
                log.warning("roster refused: %s", exc)
                return False
            if self._roster_file is not None:
                atomic_write(self._roster_file, payload)
            self._adopt(roster)
        log.info("fleet %s roster: %s", self.fleet, ", ".join(d.device_id for d in roster.devices))
        return True

    def _adopt(self, roster: Roster) -> None:
        """Hold ``roster``; rows it no longer vouches for go aside, set-aside ones it does come
        back (lock held)."""
        self.roster = roster
        for d, n in list(self._rows.items()):
            if not self._vouched(d, n.endpoint, online=n.online):
                del self._rows[d]
                self._aside.setdefault(d, (n, n.endpoint))
        for d, (n, claimed) in list(self._aside.items()):
            if self._vouched(d, claimed, online=n.online):
                current = self._rows.get(d)
                if current is None or n.last_seen >= current.last_seen:
                    self._rows[d] = n
                del self._aside[d]

    def _vouched(self, device_id: str, endpoint: str, *, online: bool) -> bool:
        """Whether the roster (when enforced) lists ``device_id`` at ``endpoint`` (lock held)."""
        if self.roster is None:
            return not self._require_roster
        listed = self.roster.endpoint_of(device_id)
        if listed is None:
            return False
        return listed == endpoint or (not online and not endpoint)

    def observe(self, topic: str, payload: bytes) -> bool:
        """Take one presence (or roster) message; False when it was not for this table, was
        malformed, or was not vouched for by the roster."""
        if topic == self.roster_topic:
            return self.observe_roster(payload)
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
                self._aside.pop(parsed.device_id, None)
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
            if not self._vouched(row.device_id, presence.predict_endpoint, online=row.online):
                self.forged += 1
                self._aside[row.device_id] = (row, presence.predict_endpoint)
                forged = True
            else:
                self._rows[row.device_id] = row
                self._aside.pop(row.device_id, None)
                forged = False
        if forged:
            log.warning(
                "ignoring presence of %s at %r: the fleet roster does not list it there",
                row.device_id,
                presence.predict_endpoint,
            )
            return False
        return True

    def listed(self, device_id: str) -> bool:
        """Whether ``device_id`` may call this agent's peer listener: on the roster once one is
        held (or required), any device of the fleet's CA before."""
        with self._lock:
            if self.roster is None:
                return not self._require_roster
            return self.roster.endpoint_of(device_id) is not None

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
        tls: Callable[[str], rpc.ClientTls | None] = lambda _d: None,
    ) -> None:
        """``tls(device_id)``: mTLS to that neighbour (an enrolled agent: its own identity,
        the neighbour's certificate checked for the device id the roster lists), else None."""
        self.table = table
        self._own = own
        self._deadline = deadline
        self._clock = clock
        self._channels = Channels(tls=tls)
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
                reply: inference_pb2.PredictResponse = self._channels.stub(
                    n.endpoint, n.device_id
                ).Predict(
                    request,
                    timeout=timeout,
                    metadata=((failover.FORWARDED_HEADER, own.device_id),),
                )
            except grpc.RpcError as exc:
                code = code_of(exc)
                tried.append(f"{n.device_id}: {code.name}")
                if code == grpc.StatusCode.PERMISSION_DENIED:
                    # its roster does not list this device (yet): another neighbour's may
                    log.info("neighbour %s refused this device as a peer", n.device_id)
                    continue
                if code not in FAILOVER_CODES:
                    # the neighbour refused the request itself (bad input): so would the others
                    log.info("neighbour %s refused a forwarded Predict: %s", n.device_id, code)
                    break
                continue
            self.forwarded += 1
            reply.served_by_neighbour = True
            # who the roster says is there, not what it claims; over mTLS the handshake proved
            # a certificate of the fleet CA for that device id
            reply.device_id = n.device_id
            return reply, tried
        return None, tried

    def close(self) -> None:
        self._channels.close()
