"""The rollout timeline from a constructed ``RolloutInfo``: the numbers it draws, and valid
PNG and SVG files whichever suffix is asked for."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from edgefleet.edgectl.rollout_plot import plot_paths, timeline, write_rollout_plot
from edgefleet.v1 import controller_pb2 as pb

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
T0 = 1_700_000_000_000
LINE = "canary d0 failed the latency gate: p95 9.00 ms > 1.5x baseline 2.00 ms"


def _h(
    at_s: float, kind: str, device: str = "", old: str = "", new: str = "", msg: str = ""
) -> pb.RolloutTransition:
    return pb.RolloutTransition(
        at_ms=T0 + int(at_s * 1000), kind=kind, device_id=device, old=old, new=new, message=msg
    )


def rolled_back() -> pb.RolloutInfo:
    """Three devices, a canary that failed its latency gate and went back."""
    return pb.RolloutInfo(
        rollout_id="ro-test",
        fleet="f",
        release="m:1.1.0",
        rollout_phase=pb.ROLLOUT_PHASE_ROLLED_BACK,
        step_sizes=[1, 3],
        strategy=pb.RolloutStrategy(strategy_kind=pb.STRATEGY_KIND_CANARY),
        reason=LINE + "; 1 of 1 devices failed (limit 0)",
        created_at_ms=T0,
        updated_at_ms=T0 + 6000,
        devices=[pb.RolloutDevice(device_id=d) for d in ("d0", "d1", "d2")],
        history=[
            _h(0, "device", "d0", "waiting", "sent"),
            _h(0, "phase", "", "", "canary"),
            _h(3, "device", "d0", "sent", "failed", LINE),
            _h(3, "device", "d0", "failed", "rolling_back"),
            _h(3, "gate", "d0", "", "failed", LINE),
            _h(3, "gate", "", "", "failed", LINE + "; 1 of 1 devices failed (limit 0)"),
            _h(3, "phase", "", "canary", "rolling_back"),
            _h(5, "device", "d0", "rolling_back", "reverted"),
            _h(5, "phase", "", "rolling_back", "rolled_back"),
        ],
    )


def test_the_timeline_replays_the_history() -> None:
    line = timeline(rolled_back())

    assert line.times == pytest.approx([0.0, 3.0, 5.0, 6.5]), "room after the last change"
    assert line.counts["waiting"] == [2, 2, 2, 2]
    assert line.counts["sent"] == [1, 0, 0, 0]
    assert line.counts["rolling_back"] == [0, 1, 0, 0]
    assert line.counts["reverted"] == [0, 0, 1, 1]
    assert [p for _, _, p in line.phases] == ["canary", "rolling_back", "rolled_back"]
    assert [s for s, _, _ in line.phases] == [0.0, 3.0, 5.0]
    assert [e for _, e, _ in line.phases] == pytest.approx([3.0, 5.0, 6.5])
    assert [(at, verdict) for at, verdict, _ in line.gates] == [(3.0, "failed")] * 2


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_both_formats_are_written_and_valid(tmp_path: Path, suffix: str) -> None:
    asked = tmp_path / "out" / f"timeline{suffix}"

    written = write_rollout_plot(rolled_back(), asked)

    assert written[0] == asked and {p.suffix for p in written} == {".png", ".svg"}
    png = next(p for p in written if p.suffix == ".png")
    svg = next(p for p in written if p.suffix == ".svg")
    assert png.read_bytes().startswith(PNG_MAGIC)
    root = ET.parse(svg).getroot()
    assert root.tag.endswith("svg")
    assert "rolled_back" in svg.read_text(), "the phase bands are named"


def test_an_empty_history_still_draws(tmp_path: Path) -> None:
    info = pb.RolloutInfo(
        rollout_id="ro-x", rollout_phase=pb.ROLLOUT_PHASE_PENDING, created_at_ms=T0
    )
    written = write_rollout_plot(info, tmp_path / "empty.svg")
    assert all(p.stat().st_size > 0 for p in written)


def test_another_suffix_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\.png or \.svg"):
        plot_paths(Path("timeline.pdf"))
