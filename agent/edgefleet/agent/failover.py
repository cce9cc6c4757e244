"""Which neighbour serves a Predict this device cannot (DESIGN.md section 1): the pure choice.

``candidates(neighbours, own=..., release=..., now=...)`` orders the fleet's other devices for
one request; the agent's servicer (server-side failover) and ``FailoverClient`` (client-side,
when the agent itself is down) both walk that order with a short deadline each. No I/O here:
the neighbour table is an argument, time too.

Order: only online neighbours with an endpoint and an active release, never this device; those
on the wanted release first, then the rest; within each group the one heard from most recently
first (a device that just said "online" is likelier up than one silent for hours), then by id so
the order is stable. The wanted release is the request's, else this device's own (target, else
last active); with neither, every healthy neighbour is as good as another.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

FORWARDED_HEADER = "x-edgefleet-forwarded"
"""gRPC metadata key on a forwarded Predict; its value names the sender. A request carrying it
is never forwarded again (loop guard)."""


@dataclass(frozen=True)
class Neighbour:
    """One device of the fleet as its last presence message described it."""

    device_id: str
    endpoint: str = ""
    release: str = ""
    online: bool = False
    last_seen: float = 0.0
    """When this device last heard its presence (the observer's clock, seconds)."""

    @property
    def healthy(self) -> bool:
        """Can be asked to serve: online, reachable and with a model active."""
        return self.online and bool(self.endpoint) and bool(self.release)


@dataclass(frozen=True)
class OwnState:
    """What this device knows of itself when it looks for a neighbour."""

    device_id: str
    target_release: str = ""
    active_release: str = ""

    @property
    def release(self) -> str:
        return self.target_release or self.active_release


def wanted_release(request_release: str, own: OwnState) -> str:
    """The release a neighbour should preferably serve ("" = any)."""
    return request_release or own.release


def candidates(
    neighbours: Iterable[Neighbour],
    *,
    own: OwnState,
    release: str = "",
    now: float,
    max_silence: float | None = None,
) -> list[Neighbour]:
    """Healthy neighbours, best first, for a request that expects ``release`` ("" = none).

    ``max_silence`` (seconds, optional): leave out neighbours not heard from for longer.
    """
    want = wanted_release(release, own)
    usable = [
        n
        for n in neighbours
        if n.device_id != own.device_id
        and n.healthy
        and (max_silence is None or now - n.last_seen <= max_silence)
    ]
    return sorted(
        usable, key=lambda n: (bool(want) and n.release != want, -n.last_seen, n.device_id)
    )
