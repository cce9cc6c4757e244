"""The MQTT topic tree (DESIGN.md section 3). Device and fleet ids are validated names, so
they can never contain ``/``, ``+`` or ``#``."""

from __future__ import annotations

from dataclasses import dataclass

from edgefleet.common.errors import MalformedMessageError

ROOT = "ef/v1"

DEVICE_CHANNELS = ("desired", "status", "events", "telemetry")


def desired(device_id: str) -> str:
    return f"{ROOT}/dev/{device_id}/desired"


def status(device_id: str) -> str:
    return f"{ROOT}/dev/{device_id}/status"


def events(device_id: str) -> str:
    return f"{ROOT}/dev/{device_id}/events"


def telemetry(device_id: str) -> str:
    return f"{ROOT}/dev/{device_id}/telemetry"


def presence(fleet: str, device_id: str) -> str:
    return f"{ROOT}/fleet/{fleet}/presence/{device_id}"


TRUST = f"{ROOT}/trust"
"""The signed trust bundle (retained, one for every fleet: the signing keys are global)."""


def trust() -> str:
    return TRUST


def roster(fleet: str) -> str:
    """The signed fleet roster (retained): who failover may forward to."""
    return f"{ROOT}/fleet/{fleet}/roster"


def fleet_presence(fleet: str) -> str:
    """Subscription filter for every device's presence in one fleet."""
    return f"{ROOT}/fleet/{fleet}/presence/+"


@dataclass(frozen=True)
class Parsed:
    channel: str  # desired | status | events | telemetry | presence
    device_id: str
    fleet: str = ""


def parse(topic: str) -> Parsed:
    parts = topic.split("/")
    if parts[:2] == ["ef", "v1"]:
        if len(parts) == 5 and parts[2] == "dev" and parts[4] in DEVICE_CHANNELS:
            return Parsed(parts[4], parts[3])
        if len(parts) == 6 and parts[2] == "fleet" and parts[4] == "presence":
            return Parsed("presence", parts[5], parts[3])
    raise MalformedMessageError(f"not an EdgeFleet topic: {topic!r}")
