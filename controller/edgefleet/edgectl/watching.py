"""Watching a deploy: poll ``ListDevices`` until ``convergence`` says every target is done.

The shell around ``convergence.assess``: it turns ``DeviceInfo`` messages into observations,
calls ``on_progress`` after each poll (the CLI and the demo draw their progress from it) and
stops at convergence, at the first poll where nothing is pending, or at the timeout. Clock
and sleep come in as parameters.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from edgefleet.common import wire
from edgefleet.edgectl.client import ControllerClient
from edgefleet.edgectl.convergence import Observed, RolloutProgress, assess
from edgefleet.v1 import controller_pb2 as pb

POLL_INTERVAL_S = 0.25


@dataclass(frozen=True)
class WatchResult:
    progress: RolloutProgress
    timed_out: bool
    devices: dict[str, pb.DeviceInfo]  # the last report of each target device


def observed(device: pb.DeviceInfo) -> Observed:
    return Observed(
        device_id=device.device_id,
        phase=wire.phase_from_pb(device.phase),
        active_release=device.active_release,
        target_release=device.target_release,
        generation_applied=device.generation_applied,
        last_error=device.last_error,
        online=device.online,
    )


def targets_of(reply: pb.DeployResponse) -> dict[str, int]:
    return {t.device_id: t.generation for t in reply.targets}


def watch(
    client: ControllerClient,
    *,
    release: str,
    fleet: str,
    targets: dict[str, int],
    timeout_s: float,
    on_progress: Callable[[RolloutProgress], None] = lambda _: None,
    interval_s: float = POLL_INTERVAL_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> WatchResult:
    deadline = clock() + timeout_s
    while True:
        devices = {d.device_id: d for d in client.list_devices(fleet) if d.device_id in targets}
        progress = assess(release, targets, {k: observed(d) for k, d in devices.items()})
        on_progress(progress)
        if progress.done:
            return WatchResult(progress, timed_out=False, devices=devices)
        if clock() >= deadline:
            return WatchResult(progress, timed_out=True, devices=devices)
        sleep(min(interval_s, max(0.0, deadline - clock())))
