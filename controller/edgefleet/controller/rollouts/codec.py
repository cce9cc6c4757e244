"""A parsed ``Strategy`` as plain JSON values and back, for the rollout's database row.

Amounts keep their exact value and kind (count or share); durations are seconds. A key added
later falls back to the ``Strategy`` default when an older row lacks it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgefleet.controller.rollouts.strategy import Amount, Kind, Strategy

VERSION = 1


def _amount(a: Amount) -> list[Any]:
    return [a.value, a.percent]


def _from_amount(v: Any) -> Amount:
    value, percent = v
    return Amount(float(value), bool(percent))


def strategy_to_json(s: Strategy) -> dict[str, Any]:
    return {
        "v": VERSION,
        "kind": s.kind.value,
        "canary": _amount(s.canary) if s.canary is not None else None,
        "waves": [_amount(w) for w in s.waves],
        "max_parallel": s.max_parallel,
        "bake_s": s.bake_s,
        "device_timeout_s": s.device_timeout_s,
        "max_failures": _amount(s.max_failures),
        "max_latency_ratio": s.max_latency_ratio,
        "max_error_rate": s.max_error_rate,
    }


def strategy_from_json(d: Mapping[str, Any] | None) -> Strategy:
    """The strategy a row stored; ``None`` (a row from before strategies) = the default."""
    default = Strategy()
    if not d:
        return default
    canary = d.get("canary")
    failures = d.get("max_failures")
    return Strategy(
        kind=Kind(d.get("kind", default.kind.value)),
        canary=_from_amount(canary) if canary is not None else None,
        waves=tuple(_from_amount(w) for w in d.get("waves", ())),
        max_parallel=int(d.get("max_parallel", default.max_parallel)),
        bake_s=float(d.get("bake_s", default.bake_s)),
        device_timeout_s=float(d.get("device_timeout_s", default.device_timeout_s)),
        max_failures=_from_amount(failures) if failures is not None else default.max_failures,
        max_latency_ratio=float(d.get("max_latency_ratio", default.max_latency_ratio)),
        max_error_rate=float(d.get("max_error_rate", default.max_error_rate)),
    )
