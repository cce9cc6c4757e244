"""Durations as operators type them (``30s``, ``5m``, ``500ms``, ``1.5h``; a bare number is
seconds), for both sides: ``edgectl`` turns its flags into seconds before they go on the wire,
the controller reads a ``RolloutStrategy``'s ``bake`` and ``device_timeout`` strings."""

from __future__ import annotations

import re

from edgefleet.common.errors import InvalidInputError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str, *, what: str) -> float:
    """Seconds; ``InvalidInputError`` naming ``what`` (the flag) for anything else."""
    m = _DURATION.match(text)
    if not m:
        raise InvalidInputError(f"{what}: expected a duration like 30s, 5m or 500ms, got {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]
