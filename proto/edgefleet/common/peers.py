"""Peer artifact sources: a device of the fleet that already holds a release's blobs.

A desired state's ``artifact_sources`` may name peers first, as ``peer://DEVICE@HOST:PORT``:
the agent dials ``HOST:PORT`` (the peer's mTLS listener) with its own device certificate and
checks the peer's certificate names ``DEVICE``. Bytes from a peer are verified against the
signed digest and size like any other source's, so a peer is a cache, never trusted.
"""

from __future__ import annotations

from edgefleet.common.errors import InvalidInputError

SCHEME = "peer://"


def source(device_id: str, endpoint: str) -> str:
    """The source string for ``device_id``'s peer listener at ``endpoint`` (``host:port``)."""
    if not device_id or "@" in device_id or not endpoint:
        raise InvalidInputError(f"not a peer source: device {device_id!r}, endpoint {endpoint!r}")
    return f"{SCHEME}{device_id}@{endpoint}"


def is_source(value: str) -> bool:
    return value.startswith(SCHEME)


def parse(value: str) -> tuple[str, str]:
    """``(device_id, host:port)`` of a ``peer://DEVICE@HOST:PORT`` source."""
    device_id, at, endpoint = value.removeprefix(SCHEME).partition("@")
    if not is_source(value) or not at or not device_id or not endpoint:
        raise InvalidInputError(f"not a peer source (peer://DEVICE@HOST:PORT): {value!r}")
    return device_id, endpoint
