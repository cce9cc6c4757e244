"""Has a deploy converged? A pure function of the deploy's targets and what devices report.

A target device has *converged* once it reports ``generation_applied`` at or past the
generation the deploy gave it while active on the release. It has *failed* once it applied
that generation but reports ``failed``/``rolled_back``, or ``active`` on another release (it
fell back to its last good model), or reports ``failed``/``rolled_back`` while working on that
very release. Anything else is
still *pending*. No I/O and no protobuf here: ``watching`` feeds it observations.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from edgefleet.common.types import InstallPhase

_FAILED_PHASES = frozenset({InstallPhase.FAILED, InstallPhase.ROLLED_BACK})


class Outcome(StrEnum):
    PENDING = "pending"
    CONVERGED = "converged"
    FAILED = "failed"


@dataclass(frozen=True)
class Observed:
    """What the controller last heard from one device."""

    device_id: str
    phase: InstallPhase | None = None
    active_release: str = ""
    target_release: str = ""
    generation_applied: int = 0
    last_error: str = ""
    online: bool = True


@dataclass(frozen=True)
class DeviceProgress:
    device_id: str
    target_generation: int
    outcome: Outcome
    observed: Observed | None  # None: the controller does not list the device (any more)


@dataclass(frozen=True)
class RolloutProgress:
    release: str
    devices: tuple[DeviceProgress, ...]

    def count(self, outcome: Outcome) -> int:
        return sum(1 for d in self.devices if d.outcome is outcome)

    @property
    def done(self) -> bool:
        """No device is pending any more (each converged or failed)."""
        return self.count(Outcome.PENDING) == 0

    @property
    def ok(self) -> bool:
        return self.count(Outcome.CONVERGED) == len(self.devices)


def outcome(release: str, target_generation: int, seen: Observed | None) -> Outcome:
    if seen is None:
        return Outcome.PENDING
    if seen.generation_applied >= target_generation:
        if seen.phase is InstallPhase.ACTIVE:
            # active on another release after applying ours: it rolled back to the last good one
            return Outcome.CONVERGED if seen.active_release == release else Outcome.FAILED
        if seen.phase in _FAILED_PHASES:
            return Outcome.FAILED
        return Outcome.PENDING  # applied, still installing or health-checking
    if seen.phase in _FAILED_PHASES and seen.target_release == release:
        return Outcome.FAILED
    return Outcome.PENDING


def assess(
    release: str, targets: Mapping[str, int], observed: Mapping[str, Observed]
) -> RolloutProgress:
    """Progress of a deploy of ``release`` to ``targets`` (device id -> generation)."""
    return RolloutProgress(
        release=release,
        devices=tuple(
            DeviceProgress(
                device_id=device_id,
                target_generation=generation,
                outcome=outcome(release, generation, observed.get(device_id)),
                observed=observed.get(device_id),
            )
            for device_id, generation in sorted(targets.items())
        ),
    )
