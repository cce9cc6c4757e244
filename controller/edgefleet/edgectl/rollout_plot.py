"""The timeline of a rollout (``edgectl rollout status ID --plot FILE``), from its history.

x is seconds since the rollout started. The devices per rollout state (waiting, sent, healthy,
failed, rolling_back, reverted) are stacked areas that step at each recorded change: every
device starts out waiting, and each ``device`` transition of ``RolloutInfo.history`` moves one
device from its old state to its new one. Behind them, the rollout's phases are coloured bands
named at the top; each gate decision is a vertical line (green: passed, red: failed) with a
short label. A history the controller had to cut short (``LIMIT`` device changes) is drawn as
far as it goes.

matplotlib is imported inside ``write_rollout_plot`` so the rest of ``edgectl`` starts without
it; the figure is drawn on an Agg canvas, never through pyplot (no global state).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgefleet.edgectl import following, plotfile
from edgefleet.v1 import controller_pb2 as pb

if TYPE_CHECKING:
    from matplotlib.axes import Axes

FORMATS = plotfile.FORMATS
STATES = ("healthy", "sent", "failed", "rolling_back", "reverted", "waiting")  # bottom up
STATE_COLOURS = {
    "healthy": "#2a9d3f",
    "sent": "#4c9be8",
    "waiting": "#d0d0d0",
    "failed": "#d62728",
    "rolling_back": "#ff9f1c",
    "reverted": "#9467bd",
}
PHASE_COLOURS = {
    "pending": "#f2f2f2",
    "canary": "#e3f0fb",
    "wave": "#e8f5e9",
    "paused": "#fff8e1",
    "succeeded": "#e0f2e3",
    "rolling_back": "#fde7e7",
    "rolled_back": "#f8d7d7",
}
MAX_LABELS = 10  # gate decisions labelled; the rest are lines only
LABEL_CHARS = 60  # per label line; three lines at most


def plot_paths(path: Path) -> tuple[Path, Path]:
    """``FILE.png`` -> (``FILE.png``, ``FILE.svg``), and the other way round; ValueError for
    any other suffix (so the CLI can refuse it before asking the controller)."""
    return plotfile.plot_paths(path, "a timeline")


@dataclass(frozen=True)
class Timeline:
    """The rollout's history as numbers: what the chart draws."""

    times: list[float]  # seconds since the start, one per change (the first is 0)
    counts: dict[str, list[int]]  # state -> devices in it at each time
    phases: list[tuple[float, float, str]]  # (start, end, phase)
    gates: list[tuple[float, str, str]]  # (time, passed | failed, message)
    end: float


def timeline(info: pb.RolloutInfo) -> Timeline:
    """Replay ``info.history``: devices per state at each change, phase spans, gate times."""
    start = info.created_at_ms or min((h.at_ms for h in info.history), default=0)
    last = max([info.updated_at_ms, *(h.at_ms for h in info.history)], default=start)
    span = (last - start) / 1000.0
    end = max(span * 1.08, span + 0.5, 1.0)  # room to see the state the last change left
    state = {d.device_id: "waiting" for d in info.devices}
    times, counts = [0.0], {s: [0] for s in STATES}
    counts["waiting"][0] = len(state)
    phases: list[tuple[float, str]] = []
    gates: list[tuple[float, str, str]] = []
    for h in info.history:
        at = max((h.at_ms - start) / 1000.0, 0.0)
        if h.kind == "phase":
            phases.append((at, h.new))
        elif h.kind == "gate":
            gates.append((at, h.new, h.message))
        elif h.kind == "device" and h.new in counts and h.device_id in state:
            if at != times[-1]:
                times.append(at)
                for s in STATES:
                    counts[s].append(counts[s][-1])
            counts[state[h.device_id]][-1] -= 1
            counts[h.new][-1] += 1
            state[h.device_id] = h.new
    times.append(end)
    for s in STATES:
        counts[s].append(counts[s][-1])
    if not phases and info.rollout_phase:
        phases = [(0.0, following.phase(info))]
    spans = [
        (at, phases[i + 1][0] if i + 1 < len(phases) else end, phase)
        for i, (at, phase) in enumerate(phases)
    ]
    return Timeline(times, counts, spans, gates, end)


def write_rollout_plot(info: pb.RolloutInfo, path: Path) -> list[Path]:
    """Draw the timeline of ``info`` (from ``info.history``) into ``path`` (.png or .svg) and
    the other format beside it (same stem); return the paths written, ``path`` first."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    paths = plot_paths(path)
    line = timeline(info)
    fig = Figure(figsize=(11, 5.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    _phases(ax, line)
    ax.stackplot(
        line.times,
        *(line.counts[s] for s in STATES),
        labels=STATES,
        colors=[STATE_COLOURS[s] for s in STATES],
        step="post",
        alpha=0.9,
    )
    _gates(ax, line)
    total = len(info.devices)
    ax.set_xlim(0, line.end)
    ax.set_ylim(0, max(total, 1) * 1.18)
    ax.set_xlabel("seconds since the rollout started")
    ax.set_ylabel("devices")
    release = info.release or "(previous releases)"
    ax.set_title(
        f"rollout {info.rollout_id}: {release} -> {info.fleet} ({following.kind(info) or 'all'}),"
        f" {following.phase(info)}; {total} devices",
        fontsize=10,
    )
    if not info.history:
        ax.text(0.5, 0.5, "no history recorded", transform=ax.transAxes, ha="center")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="device state")
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    for p in paths:
        fig.savefig(p, format=p.suffix.lstrip(".").lower(), dpi=110)
    return list(paths)


def _phases(ax: Axes, line: Timeline) -> None:
    for start, end, phase in line.phases:
        ax.axvspan(start, end, color=PHASE_COLOURS.get(phase, "#eeeeee"), zorder=0, lw=0)
        ax.text(
            (start + end) / 2,
            0.99,
            phase,
            transform=ax.get_xaxis_transform(),
            ha="center",
            va="top",
            fontsize=8,
            color="#555555",
        )


def _gates(ax: Axes, line: Timeline) -> None:
    labelled: list[str] = []
    for at, verdict, message in line.gates:
        colour = "#2a9d3f" if verdict == "passed" else "#d62728"
        ax.axvline(at, color=colour, lw=1.2, ls="--", zorder=3)
        if len(labelled) >= MAX_LABELS or any(message.startswith(m) for m in labelled):
            continue  # the abort a device's failure caused starts with the same line
        lines = textwrap.wrap(message, LABEL_CHARS) or [verdict]
        text = "\n".join(lines[:3]) + (" ..." if len(lines) > 3 else "")
        ax.text(
            at,
            0.93 - 0.15 * (len(labelled) % 4),
            text,
            transform=ax.get_xaxis_transform(),
            fontsize=7,
            color=colour,
            va="top",
            ha="left" if at < line.end * 0.6 else "right",
            bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none", "pad": 1.5},
            zorder=4,
        )
        labelled.append(message)
