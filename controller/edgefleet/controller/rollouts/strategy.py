"""Rollout strategies as operators write them, parsed and validated before anything is sent.

``--strategy canary --canary 10% --waves 25%,50%,100% --max-failures 5% --bake 30s``:
amounts are a device count (``2``) or a share of the fleet (``10%``); waves are cumulative
targets; durations take ``ms``, ``s``, ``m`` or ``h``, read by ``edgefleet.common.durations``
as edgectl's flags are.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from edgefleet.common.durations import parse_duration
from edgefleet.common.errors import InvalidInputError

_AMOUNT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%?)\s*$")


class Kind(StrEnum):
    ALL_AT_ONCE = "all-at-once"
    CANARY = "canary"


@dataclass(frozen=True)
class Amount:
    """A number of devices, or a percentage of the fleet."""

    value: float
    percent: bool

    @classmethod
    def parse(cls, text: str, *, what: str) -> Amount:
        m = _AMOUNT.match(text)
        if not m:
            raise InvalidInputError(
                f"{what}: expected a count like 2 or a share like 10%, got {text!r}"
            )
        value, percent = float(m.group(1)), m.group(2) == "%"
        if percent and not 0 <= value <= 100:
            raise InvalidInputError(f"{what}: {text!r} is not between 0% and 100%")
        if not percent and value != int(value):
            raise InvalidInputError(f"{what}: a device count must be whole, got {text!r}")
        return cls(value, percent)

    def of(self, fleet_size: int) -> int:
        """Devices this amount stands for in a fleet of ``fleet_size`` (a share rounds up)."""
        if self.percent:
            return min(fleet_size, math.ceil(fleet_size * self.value / 100 - 1e-9))
        return min(fleet_size, int(self.value))

    def __str__(self) -> str:
        return f"{self.value:g}%" if self.percent else f"{int(self.value)}"


@dataclass(frozen=True)
class Strategy:
    kind: Kind = Kind.ALL_AT_ONCE
    canary: Amount | None = None
    """Devices in the first step (canary only)."""
    waves: tuple[Amount, ...] = ()
    """Cumulative targets after the canary; the last must cover the fleet."""
    max_parallel: int = 0
    """Most devices updating at once; 0 = no limit."""
    bake_s: float = 0.0
    """Time a step must stay healthy before the next one starts."""
    device_timeout_s: float = 300.0
    """A device that has not reported the new release after this counts as failed."""
    max_failures: Amount = field(default_factory=lambda: Amount(0.0, True))
    """Abort when the share (or count) of failed devices among those sent exceeds this."""
    max_latency_ratio: float = 1.5
    """Gate: a device's p95 on the new release may be at most this times its previous p95."""
    max_error_rate: float = 0.05
    """Gate: errors per request on the new release."""

    def steps(self, fleet_size: int) -> tuple[int, ...]:
        """Cumulative device counts after each step, strictly increasing, ending at the fleet."""
        if fleet_size <= 0:
            return ()
        if self.kind is Kind.ALL_AT_ONCE:
            return (fleet_size,)
        raw = [self.canary.of(fleet_size) if self.canary else 1]
        raw.extend(w.of(fleet_size) for w in self.waves)
        raw.append(fleet_size)
        out: list[int] = []
        for n in (max(x, 1) for x in raw):
            if not out or n > out[-1]:
                out.append(n)
        return tuple(out)

    def too_many_failures(self, failed: int, sent: int) -> bool:
        if failed == 0:
            return False
        if self.max_failures.percent:
            return sent > 0 and failed * 100 > self.max_failures.value * sent
        return failed > self.max_failures.value


def parse(
    *,
    kind: str = "all-at-once",
    canary: str | None = None,
    waves: str | None = None,
    max_parallel: int = 0,
    bake: str = "0s",
    device_timeout: str = "5m",
    max_failures: str = "0%",
    max_latency_ratio: float = 1.5,
    max_error_rate: float = 0.05,
) -> Strategy:
    """Validate every value at once, so a bad one fails before anything is sent."""
    try:
        k = Kind(kind)
    except ValueError:
        choices = ", ".join(x.value for x in Kind)
        raise InvalidInputError(f"--strategy must be one of {choices}, got {kind!r}") from None
    if k is Kind.ALL_AT_ONCE and (canary or waves):
        raise InvalidInputError("--canary and --waves need --strategy canary")
    canary_amount = Amount.parse(canary, what="--canary") if canary else None
    if k is Kind.CANARY and canary_amount is None:
        canary_amount = Amount(1, False)
    if canary_amount is not None and canary_amount.value == 0:
        raise InvalidInputError("--canary must be at least one device")
    wave_amounts = _parse_waves(waves)
    if max_parallel < 0:
        raise InvalidInputError(f"--max-parallel must be 0 (no limit) or more, got {max_parallel}")
    if max_latency_ratio < 1.0:
        raise InvalidInputError(f"--max-latency-ratio must be >= 1.0, got {max_latency_ratio}")
    if not 0.0 <= max_error_rate <= 1.0:
        raise InvalidInputError(f"--max-error-rate must be within 0..1, got {max_error_rate}")
    timeout_s = parse_duration(device_timeout, what="--device-timeout")
    if timeout_s <= 0:
        raise InvalidInputError("--device-timeout must be positive")
    return Strategy(
        kind=k,
        canary=canary_amount,
        waves=wave_amounts,
        max_parallel=max_parallel,
        bake_s=parse_duration(bake, what="--bake"),
        device_timeout_s=timeout_s,
        max_failures=Amount.parse(max_failures, what="--max-failures"),
        max_latency_ratio=max_latency_ratio,
        max_error_rate=max_error_rate,
    )


def _parse_waves(text: str | None) -> tuple[Amount, ...]:
    if not text:
        return ()
    amounts = tuple(Amount.parse(p, what="--waves") for p in text.split(","))
    if len({a.percent for a in amounts}) > 1:
        raise InvalidInputError(f"--waves: use all counts or all shares, not both: {text!r}")
    values: Sequence[float] = [a.value for a in amounts]
    if any(b <= a for a, b in itertools.pairwise(values)):
        raise InvalidInputError(f"--waves are cumulative and must increase: {text!r}")
    return amounts
