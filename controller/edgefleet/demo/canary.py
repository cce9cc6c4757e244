"""The demo's bad release: a model whose accuracy collapsed, stopped at its one-device canary.

The model is the digits MLP trained on shuffled labels, so it answers well-formed nonsense
(about one digit in ten right). Its release carries golden data, the first test digits with
their true labels, and a policy that 90 % of them must come out right: the gate a sound model
passes. It goes out with ``--strategy canary --canary 1 --max-failures 0``: the canary refuses
it before activating, the controller aborts the rollout and rolls back what it touched.

What is checked, from the controller's records, not assumed: the rollout did not succeed; the
canary is the only device it sent anything and that device failed; every other device's desired
generation and active release are what they were before, none reported an event about the bad
release and the rollout's history moves none of them; the canary runs the good release again.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console

from edgefleet.common.types import HealthPolicy, ReleaseRef
from edgefleet.demo import digits
from edgefleet.demo.errors import DemoFailed
from edgefleet.edgectl import following
from edgefleet.edgectl.client import ControllerClient, file_chunks
from edgefleet.edgectl.deploying import strategy_message
from edgefleet.edgectl.rollout_status import RolloutLive, status_view
from edgefleet.v1 import controller_pb2 as pb

GOLDEN_ROWS = 64
MIN_AGREEMENT = 0.9
BACK_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class CanaryOutcome:
    release: ReleaseRef
    accuracy: float  # of the bad model on the test split
    info: pb.RolloutInfo  # the finished rollout, as GetRollout returns it (with its history)
    canary: tuple[str, ...]
    untouched: tuple[str, ...]

    @property
    def reason(self) -> str:
        return self.info.reason


def shuffled(data: digits.DigitsData, *, seed: int = 7) -> digits.DigitsData:
    """The same digits with their training labels permuted: nothing left to learn."""
    labels = np.random.default_rng(seed).permutation(data.y_train)
    return digits.DigitsData(data.x_train, labels, data.x_test, data.y_test)


def golden_npz(data: digits.DigitsData, *, rows: int = GOLDEN_ROWS) -> bytes:
    """``pixels`` and ``expected/label``: test digits and their true classes."""
    buf = io.BytesIO()
    arrays = {"pixels": data.x_test[:rows], "expected/label": data.y_test[:rows]}
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def deploy_bad(
    client: ControllerClient,
    console: Console,
    *,
    name: str,
    version: str,
    fleet: str,
    good: str,
    data: digits.DigitsData,
    workdir: Path,
    timeout_s: float,
    runtime: str = "",
    publish: Callable[[str], None] | None = None,
) -> CanaryOutcome:
    """``runtime``: the bad release's (``container``; "": in-process), handed to
    ``publish`` once created."""
    ref = ReleaseRef(name, version)
    bad = digits.train(shuffled(data), hidden=32, seed=3, max_iter=50)
    path = workdir / "models" / f"{name}-{version}-shuffled.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bad.onnx_bytes)
    model = client.upload_model(
        file_chunks(path), name=name, size=len(bad.onnx_bytes),
        description="digits MLP trained on shuffled labels (the demo's bad release)",
    )  # fmt: skip
    client.create_release(
        name,
        version,
        model_version=model.version,
        health=HealthPolicy(golden_min_agreement=MIN_AGREEMENT),
        golden=golden_npz(data),
        notes="deliberately bad: trained on shuffled labels",
        runtime=runtime,
    )
    if publish is not None:
        publish(str(ref))
    console.print(
        f"  model v{model.version} trained on shuffled labels: {bad.accuracy:.0%} of test digits "
        f"right; release {ref} carries {GOLDEN_ROWS} golden digits, {MIN_AGREEMENT:.0%} must match"
    )
    before = {d.device_id: d for d in client.list_devices(fleet)}
    strategy = strategy_message(
        kind="canary", canary="1", waves=None, max_parallel=None, max_failures="0",
        bake=None, device_timeout=None, max_latency_ratio=None, max_error_rate=None,
    )  # fmt: skip
    reply = client.deploy(ref, fleet, strategy=strategy)
    with RolloutLive(console) as view:
        result = following.follow(
            client, reply.rollout_id, timeout_s=timeout_s, on_progress=view.update
        )
    console.print(status_view(result.snapshot))
    info = result.snapshot.info
    if result.timed_out:
        raise DemoFailed(f"the canary rollout of {ref} did not finish within {timeout_s:g}s")
    if info.rollout_phase == pb.ROLLOUT_PHASE_SUCCEEDED:
        raise DemoFailed(f"{ref} passed its canary and went to the whole fleet: the gate missed it")
    touched = tuple(
        d.device_id
        for d in info.devices
        if d.target_state != pb.TARGET_STATE_WAITING or d.generation
    )
    failed = [d.device_id for d in info.devices if following.device_failed(d)]
    if len(touched) != 1 or failed != list(touched):
        raise DemoFailed(
            f"expected exactly one canary, sent {ref} and failed; sent to {list(touched)}, "
            f"failed {failed}"
        )
    untouched = _check_untouched(client, fleet, ref, before=before, touched=touched)
    _wait_back(client, fleet, touched, good=good, timeout_s=BACK_TIMEOUT_S)
    # as GetRollout returns it once the canary is back, with its whole history
    final = client.get_rollout(info.rollout_id)
    sent = {t.device_id for t in final.history if t.kind == "device" and t.new != "waiting"}
    moved = sorted(sent - set(touched))
    if moved:
        raise DemoFailed(f"the rollout's history moves devices outside the canary: {moved}")
    return CanaryOutcome(ref, bad.accuracy, final, touched, untouched)


def _check_untouched(
    client: ControllerClient,
    fleet: str,
    ref: ReleaseRef,
    *,
    before: dict[str, pb.DeviceInfo],
    touched: tuple[str, ...],
) -> tuple[str, ...]:
    """Every device outside the canary: same desired generation and release, no event of it."""
    now = {d.device_id: d for d in client.list_devices(fleet)}
    others = tuple(sorted(set(before) - set(touched)))
    for device_id in others:
        was, is_ = before[device_id], now.get(device_id)
        if is_ is None:
            raise DemoFailed(f"{device_id} vanished from the fleet during the canary")
        if is_.generation_desired != was.generation_desired:
            raise DemoFailed(
                f"{device_id} is outside the canary but was sent generation "
                f"{is_.generation_desired} (was {was.generation_desired})"
            )
        if is_.active_release != was.active_release or is_.target_release == str(ref):
            raise DemoFailed(f"{device_id} is outside the canary but was moved towards {ref}")
    events = client.list_events(fleet=fleet, limit=1000)
    leaked = sorted({e.device_id for e in events if e.release == str(ref)} - set(touched))
    if leaked:
        raise DemoFailed(f"devices outside the canary reported events of {ref}: {leaked}")
    return others


def _wait_back(
    client: ControllerClient, fleet: str, ids: tuple[str, ...], *, good: str, timeout_s: float
) -> None:
    """Until each of ``ids`` reports ``good`` active again."""
    deadline = time.monotonic() + timeout_s
    while True:
        active = {d.device_id: d.active_release for d in client.list_devices(fleet)}
        behind = [d for d in ids if active.get(d) != good]
        if not behind:
            return
        if time.monotonic() >= deadline:
            raise DemoFailed(
                f"{', '.join(behind)} did not come back to {good} within {timeout_s:g}s "
                f"(active: {', '.join(active.get(d) or '-' for d in behind)})"
            )
        time.sleep(0.2)
