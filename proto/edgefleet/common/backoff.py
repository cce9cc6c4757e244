"""Capped exponential backoff with full jitter (pure: randomness comes in as a parameter)."""

from __future__ import annotations

from collections.abc import Callable


def delay(
    attempt: int, *, base: float = 0.5, cap: float = 30.0, rand: Callable[[], float]
) -> float:
    """Seconds before retry ``attempt`` (0-based): uniform in [0, min(cap, base * 2^attempt)]."""
    ceiling = min(cap, base * 2.0 ** min(attempt, 32))
    return float(ceiling * rand())
