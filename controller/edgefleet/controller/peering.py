"""Which devices a desired state names as artifact sources before the controller.

A device of the same fleet that is online, enrolled (not quarantined or revoked) and already
holds the release (its active or previous one) can serve the release's blobs from its mTLS
peer listener (the ``predict_endpoint`` an enrolled agent reports is that listener). When the
device being sent to has a ``site`` label, only holders with the same ``site`` are named. Up
to ``limit`` are named, chosen per device by a stable hash so that the load spreads over the
holders; the controller's own sources always come last, so a device whose peers fail still
installs.

Devices that never enrolled (``--insecure`` fleets) are never named: peers serve mTLS only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import or_, select

from edgefleet.common import peers
from edgefleet.controller.db import Database, DeviceRow, EnrolledDeviceRow, PresenceRow
from edgefleet.controller.enrollment import IdentityState

SITE_LABEL = "site"
DEFAULT_LIMIT = 3
_PAGE = 500  # device ids per IN (...) query


@dataclass(frozen=True)
class Holder:
    """A device that holds a release and can serve it."""

    device_id: str
    endpoint: str
    site: str


def choose(
    holders: Sequence[Holder], *, device_id: str, site: str, limit: int = DEFAULT_LIMIT
) -> list[str]:
    """The ``peer://`` sources for ``device_id`` (pure): same site when it has one, never
    itself, at most ``limit``, in an order stable per device and different across devices."""
    nearby = [h for h in holders if h.device_id != device_id and (not site or h.site == site)]

    def rank(h: Holder) -> bytes:
        return hashlib.sha256(f"{device_id}\0{h.device_id}".encode()).digest()

    return [peers.source(h.device_id, h.endpoint) for h in sorted(nearby, key=rank)[:limit]]


class PeerSources:
    """Reads, per fleet and release, the devices that hold it; names them per device."""

    def __init__(self, db: Database, *, limit: int = DEFAULT_LIMIT) -> None:
        self._db = db
        self.limit = limit

    def holders(self, fleet: str, release: str) -> list[Holder]:
        """Online, enrolled devices of ``fleet`` whose active or previous release is ``release``
        and that report a peer endpoint."""
        if self.limit <= 0:
            return []
        query = (
            select(DeviceRow.device_id, DeviceRow.predict_endpoint, DeviceRow.labels)
            .join(EnrolledDeviceRow, EnrolledDeviceRow.device_id == DeviceRow.device_id)
            .join(PresenceRow, PresenceRow.device_id == DeviceRow.device_id)
            .where(
                DeviceRow.fleet == fleet,
                EnrolledDeviceRow.fleet == fleet,
                EnrolledDeviceRow.state == IdentityState.ENROLLED.value,
                PresenceRow.online.is_(True),
                DeviceRow.predict_endpoint != "",
                or_(DeviceRow.active_release == release, DeviceRow.previous_release == release),
            )
        )
        with self._db.read() as session:
            rows = list(session.execute(query))
        return [Holder(d, e, str((labels or {}).get(SITE_LABEL, ""))) for d, e, labels in rows]

    def sites(self, device_ids: Sequence[str]) -> dict[str, str]:
        """Each device's ``site`` label ("" when it has none)."""
        found: dict[str, str] = {}
        ids = list(device_ids)
        with self._db.read() as session:
            for i in range(0, len(ids), _PAGE):
                rows = session.execute(
                    select(DeviceRow.device_id, DeviceRow.labels).where(
                        DeviceRow.device_id.in_(ids[i : i + _PAGE])
                    )
                )
                found.update((d, str((labels or {}).get(SITE_LABEL, ""))) for d, labels in rows)
        return found
