"""The fleet rosters failover trusts: who is in each fleet, by the registry, and where.

``build`` is pure: each device with a Predict endpoint in its own last status (a device can
publish only its own ``dev/{d}/status``, where presence is a fleet-wide, self-asserted topic) is
listed in the fleet it reported, unless the enrollment registry puts it in another fleet or has
revoked it; and a fleet that has enrolled devices lists only those (a device that never
enrolled cannot join it by saying so): the registry, not the device, owns membership.
``current`` reads both from the database. ``trustpub`` signs and publishes the result.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from sqlalchemy import select

from edgefleet.common.trustbundle import RosterEntry
from edgefleet.controller.db import Database, DeviceRow, EnrolledDeviceRow

REVOKED = "revoked"


def build(
    devices: Iterable[tuple[str, str, str]], enrolled: Mapping[str, tuple[str, str]]
) -> dict[str, tuple[RosterEntry, ...]]:
    """Per fleet, its roster entries sorted by device id.

    ``devices``: (device id, fleet reported, Predict endpoint reported) from statuses;
    ``enrolled``: device id -> (fleet, state) from the registry.
    """
    fleets: dict[str, list[RosterEntry]] = {}
    registry_fleets = {f for f, _ in enrolled.values()}
    for device_id, fleet, endpoint in devices:
        if not endpoint or not fleet:
            continue
        registered = enrolled.get(device_id)
        if registered is None:
            if fleet in registry_fleets:
                continue
        elif registered[0] != fleet or registered[1] == REVOKED:
            continue
        fleets.setdefault(fleet, []).append(RosterEntry(device_id, endpoint))
    return {f: tuple(sorted(e, key=lambda r: r.device_id)) for f, e in fleets.items()}


def current(db: Database) -> dict[str, tuple[RosterEntry, ...]]:
    with db.read() as session:
        devices = list(
            session.execute(
                select(DeviceRow.device_id, DeviceRow.fleet, DeviceRow.predict_endpoint)
            )
        )
        enrolled = {
            d: (f, s)
            for d, f, s in session.execute(
                select(
                    EnrolledDeviceRow.device_id, EnrolledDeviceRow.fleet, EnrolledDeviceRow.state
                )
            )
        }
    return build(devices, enrolled)
