"""The one switch of the active model (``switching.Switch``), on its own: real ONNX Runtime
sessions, a real ``state.json`` and slot store, the wall clock injected. Each switch must have
the state naming the slot that serves on disk before the runtime is swapped (what a crash
between the two restarts on), and a health window starts at the injected clock's time."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

from edgefleet.agent import reconcile as r
from edgefleet.agent.ledger import Ledger
from edgefleet.agent.metrics import AgentMetrics
from edgefleet.agent.reporting import Reporter
from edgefleet.agent.runtime import LoadedModel, ModelRuntime
from edgefleet.agent.state import DeviceState, HealthWindow, PendingInstall, SlotInfo, StateFile
from edgefleet.agent.store import SlotStore
from edgefleet.agent.switching import Switch
from edgefleet.common import types as t
from edgefleet.common.signing import TrustStore
from edgefleet.common.types import InstallPhase

NOW_S = 1_700_000_123.25  # the fake wall clock


def _runtime(tmp_path: Path, slot: str, version: str) -> ModelRuntime:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    path = tmp_path / f"{slot}.onnx"
    path.write_bytes(model.SerializeToString())
    manifest = t.Manifest(
        name="m",
        version=version,
        model_digest="sha256:" + "0" * 64,
        model_size=path.stat().st_size,
        inputs=(t.TensorSpec("x", "float32", (1,)),),
        outputs=(t.TensorSpec("y", "float32", (1,)),),
    )
    return ModelRuntime.load(path, LoadedModel(f"m:{version}", slot, manifest, "sha256:x"))


class _Device:
    """A switch over a real state file; ``served`` records (release, state.json at the swap)."""

    def __init__(self, tmp_path: Path, state: DeviceState) -> None:
        self.state_file = StateFile(tmp_path / "state.json")
        store = SlotStore(tmp_path / "data")
        reporter = Reporter(device_id="dev-1", fleet="f", labels={}, agent_version="test")
        self.ledger = Ledger(state_file=self.state_file, store=store, reporter=reporter)
        self.ledger.save(state)
        self.served: list[tuple[str, DeviceState]] = []
        self.switch = Switch(
            ledger=self.ledger,
            store=store,
            trust=TrustStore(),
            reporter=reporter,
            metrics=AgentMetrics(),
            serve=lambda rt, _s: self.served.append((rt.release, self.state_file.load())),
            unserve=lambda: self.served.append(("", self.state_file.load())),
            clock=lambda: NOW_S,
        )


G1 = SlotInfo("g1", "m:1.0.0", "sha256:" + "1" * 64, "sha256:" + "a" * 64)
G2 = SlotInfo("g2", "m:2.0.0", "sha256:" + "2" * 64, "sha256:" + "b" * 64)

# the window of G2 after G1, opened at the fake clock's time
WINDOW = HealthWindow(2, G2.release, "g2", "g1", int(NOW_S * 1000), 30.0)


def _install() -> PendingInstall:
    return PendingInstall(
        generation=2,
        release=G2.release,
        slot=G2.slot,
        phase=InstallPhase.HEALTH_CHECK,
        manifest_digest=G2.manifest_digest,
        model_digest=G2.model_digest,
        desired=b"signed",
    )


def test_activate_writes_the_state_then_swaps_and_opens_the_window_at_the_clock(
    tmp_path: Path,
) -> None:
    old, new = _runtime(tmp_path, "g1", "1.0.0"), _runtime(tmp_path, "g2", "2.0.0")
    device = _Device(
        tmp_path,
        DeviceState(generation_applied=1, phase=InstallPhase.ACTIVE, active=G1, install=_install()),
    )
    done = device.switch.activate(
        r.Activate(generation=2, slot="g2", release=G2.release, window_s=30.0),
        _install(),
        new,
        serving=old,
        watched_previous=None,
    )
    assert done.previous_runtime is old  # kept loaded: the window's fall-back
    expected = WINDOW  # opened at the injected clock
    assert done.window == expected
    [(release, on_disk)] = device.served
    assert release == G2.release
    # at the swap, state.json already named the new slot, the old one as previous, the window
    assert on_disk.active == G2 and on_disk.previous == G1 and on_disk.install is None
    assert on_disk.window == expected and on_disk.phase is InstallPhase.HEALTH_CHECK
    assert on_disk.generation_applied == 2


def test_roll_back_writes_the_previous_slot_then_swaps_back(tmp_path: Path) -> None:
    old, failed = _runtime(tmp_path, "g1", "1.0.0"), _runtime(tmp_path, "g2", "2.0.0")
    window = WINDOW
    device = _Device(
        tmp_path,
        DeviceState(
            generation_applied=2,
            phase=InstallPhase.HEALTH_CHECK,
            active=G2,
            previous=G1,
            window=window,
        ),
    )
    device.switch.roll_back(window, "golden check failed", failed=failed, previous=old)
    [(release, on_disk)] = device.served
    assert release == G1.release
    assert on_disk.active == G1 and on_disk.previous is None and on_disk.window is None
    assert on_disk.phase is InstallPhase.ROLLED_BACK and on_disk.generation_applied == 2
    assert on_disk.last_error == (
        f"{G2.release} failed its health window, back on {G1.release}: golden check failed"
    )


def test_roll_back_with_nothing_before_stops_serving(tmp_path: Path) -> None:
    failed = _runtime(tmp_path, "g2", "2.0.0")
    window = HealthWindow(2, G2.release, "g2", "", int(NOW_S * 1000), 30.0)
    device = _Device(
        tmp_path,
        DeviceState(2, phase=InstallPhase.HEALTH_CHECK, active=G2, window=window),
    )
    device.switch.roll_back(window, "crash loop", failed=failed, previous=None)
    [(release, on_disk)] = device.served
    assert release == ""  # unserved, after state.json named no model
    assert on_disk.active is None and on_disk.phase is InstallPhase.ROLLED_BACK
