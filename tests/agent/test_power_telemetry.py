"""Power figures in telemetry and on /metrics, read from a fixture sysfs tree (``--power-root``).

An ``ina226`` hwmon sensor reading a steady 2.5 W: telemetry carries ``power_w`` 2.5 and, for
windows with inferences, the joules per inference; a root without sensors leaves both absent.
The agent's telemetry clock is a ``Ticks``: window lengths and reading times are exact, so the
energy is too, however loaded the machine.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from edgefleet.common import types as t
from edgefleet.demo.digits import DigitsData, TrainedModel
from tests.agent.conftest import RunningAgent, StartAgent
from tests.agent.helpers import (
    ArtifactServer,
    Signer,
    Ticks,
    Watcher,
    install,
    predict,
    wait_for,
)
from tests.power import boards

WATTS = 2.5
TICK_S = 0.5


def ina226(root: Path) -> Path:
    boards.write(root, "sys/class/hwmon/hwmon0/name", "ina226")
    boards.write(root, "sys/class/hwmon/hwmon0/power1_input", int(WATTS * 1e6))  # µW
    boards.write(root, "sys/class/hwmon/hwmon0/power1_label", "VDD_IN")
    return root


def metrics_text(a: RunningAgent) -> str:
    url = f"http://127.0.0.1:{a.endpoints.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as reply:
        return str(reply.read().decode())


def test_telemetry_carries_power_from_the_sensor(
    start_agent: StartAgent,
    watch: Callable[[str], Watcher],
    signer: Signer,
    artifacts: ArtifactServer,
    digits_model: TrainedModel,
    digits_data: DigitsData,
    tmp_path: Path,
) -> None:
    a = start_agent(power_root=ina226(tmp_path / "board"), telemetry_clock=Ticks(TICK_S))
    w = watch(a.device_id)
    install(w, signer, artifacts, digits_model.onnx_bytes, version="1.0.0", generation=1)

    # Each window reads the clock once for its end and once for the sensor reading that closes
    # it, so from the second window on, window and metered time are both two ticks.
    def busy_window() -> t.Telemetry | None:
        predict(a.endpoint, {"pixels": digits_data.x_test[:2]})
        served = [
            x
            for x in w.telemetry
            if x.requests > x.errors and x.window_s == pytest.approx(2 * TICK_S)
        ]
        return served[-1] if served else None

    sample = wait_for("a telemetry window with inferences", busy_window, every=0.05)
    assert sample.power_w == pytest.approx(WATTS)
    assert sample.energy_per_inference_j is not None
    inferences = sample.requests - sample.errors
    assert sample.energy_per_inference_j == pytest.approx(WATTS * 2 * TICK_S / inferences)
    text = metrics_text(a)
    assert "edgefleet_power_watts 2.5" in text
    assert "edgefleet_energy_per_inference_joules" in text


def test_without_a_sensor_power_is_absent(
    start_agent: StartAgent,
    watch: Callable[[str], Watcher],
    signer: Signer,
    artifacts: ArtifactServer,
    digits_model: TrainedModel,
    digits_data: DigitsData,
    tmp_path: Path,
) -> None:
    (tmp_path / "bare").mkdir()
    a = start_agent(power_root=tmp_path / "bare")
    w = watch(a.device_id)
    install(w, signer, artifacts, digits_model.onnx_bytes, version="1.0.0", generation=1)
    predict(a.endpoint, {"pixels": digits_data.x_test[:2]})
    wait_for("three telemetry samples", lambda: len(w.telemetry) >= 3)
    assert all(x.power_w is None and x.energy_per_inference_j is None for x in w.telemetry)
    assert "edgefleet_power_watts" not in metrics_text(a)
