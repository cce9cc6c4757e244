"""The chart of a compression search (``edgectl model compress --plot FILE``).

Every candidate is a point: model size on x (log scale), accuracy or fidelity on y, p50 latency
as the marker's area. The original is a black diamond, the gate (the original's score minus
``max_drop``) a red dashed line with the region below it shaded, the winner ringed and
labelled. Rejected candidates differ by why (below the gate, slower than the original, other);
candidates with no size or score (skipped, not run) cannot be placed and are listed in the key
beside the chart, which numbers every candidate with its verdict. Those without a latency (those
that failed the screen) are drawn hollow.

The y axis is the gate's own scale, so a point is above the line exactly when its drop passes:
``baseline - drop``, where the baseline is the original's accuracy, top-1 agreement or cosine
similarity in percent, or 100 for the error metrics (mse, max abs error), whose drop is already
a percentage of the signal.

matplotlib is imported inside ``write_compress_plot`` so that the rest of ``edgectl`` starts
without it; figures are drawn on an Agg canvas, never through pyplot (no global state).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgefleet.edgectl import plotfile
from edgefleet.v1 import controller_pb2 as pb

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.lines import Line2D

FORMATS = plotfile.FORMATS
KEY_ROWS = 40  # candidates listed in the key; the rest are counted

# status -> (legend label, colour, marker)
STYLES = {
    "original": ("original", "black", "D"),
    "winner": ("winner", "#2a9d3f", "*"),
    "passed": ("passed", "#2a9d3f", "o"),
    "below": ("rejected: below the gate", "#d62728", "X"),
    "slower": ("rejected: slower than the original", "#ff7f0e", "v"),
    "rejected": ("rejected: other reason", "#9467bd", "s"),
    "skipped": ("skipped or not run: listed, not drawn", "#999999", "_"),
}
# Scores in 0..1 whose baseline is the original's own; the error metrics' baseline is 100.
_FRACTION_METRICS = {
    "accuracy": "accuracy (%)",
    "top1-agreement": "top-1 agreement with the original (%)",
    "cosine-similarity": "cosine similarity to the original (x 100)",
}


def plot_paths(path: Path) -> tuple[Path, Path]:
    """``FILE.png`` -> (``FILE.png``, ``FILE.svg``), and the other way round.

    Raises ValueError for any other suffix, so the CLI can refuse it before a search starts.
    """
    return plotfile.plot_paths(path, "a chart")


@dataclass(frozen=True)
class _Point:
    number: int  # 1-based, in the result's order; 0 = the original
    candidate: pb.CompressCandidate
    status: str  # a key of STYLES
    y: float


def write_compress_plot(result: pb.CompressResult, path: Path, *, max_drop: float) -> list[Path]:
    """Draw ``result``'s candidates into ``path`` (.png or .svg) and the other format beside it
    (same stem); return the paths written, ``path`` first."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    paths = plot_paths(path)
    baseline, y_label = _baseline(result.original)
    points, skipped = _points(result, baseline=baseline, max_drop=max_drop)
    rows = len(result.candidates) + 1
    height = max(6.0, 1.8 + 0.24 * min(rows, KEY_ROWS))
    with matplotlib.rc_context({"svg.fonttype": "none", "font.size": 9}):
        fig = Figure(figsize=(13.0, height), layout="constrained")
        FigureCanvasAgg(fig)
        ax, key = fig.subplots(1, 2, width_ratios=(2.3, 1.0))
        handles = _draw(ax, points, baseline=baseline, max_drop=max_drop, skipped=len(skipped))
        fig.legend(
            handles=handles, loc="outside lower center", ncols=5, fontsize=7, labelspacing=1.3
        )
        ax.set_ylabel(y_label)
        _key(key, result, points, skipped)
        fig.suptitle(_title(result, points, skipped, max_drop=max_drop))
        paths[0].parent.mkdir(parents=True, exist_ok=True)
        for out in paths:
            kind = out.suffix.lower().removeprefix(".")
            fig.savefig(
                out, format=kind, dpi=120, metadata={"Date": None} if kind == "svg" else None
            )
    return list(paths)


def _baseline(original: pb.CompressCandidate) -> tuple[float, str]:
    label = _FRACTION_METRICS.get(original.metric)
    if label is not None and math.isfinite(original.value):
        return original.value * 100, label
    name = original.metric or "metric"
    return 100.0, f"fidelity ({_tex(name)}): 100 - drop (points)"


def _status(c: pb.CompressCandidate, *, winner: str, max_drop: float) -> str:
    if c.size_bytes == 0 or not math.isfinite(c.drop):
        return "skipped"
    if c.passed_gate:
        return "winner" if c.candidate == winner else "passed"
    if c.drop > max_drop or c.verdict.startswith(("fails: drop", "fails the screen")):
        return "below"
    return "slower" if "slower" in c.verdict else "rejected"


def _points(
    result: pb.CompressResult, *, baseline: float, max_drop: float
) -> tuple[list[_Point], list[tuple[int, pb.CompressCandidate]]]:
    points: list[_Point] = []
    skipped: list[tuple[int, pb.CompressCandidate]] = []
    o = result.original
    if o.size_bytes and math.isfinite(o.drop):
        points.append(_Point(0, o, "original", baseline - o.drop))
    for number, c in enumerate(result.candidates, start=1):
        status = _status(c, winner=result.winner, max_drop=max_drop)
        if status == "skipped":
            skipped.append((number, c))
        else:
            points.append(_Point(number, c, status, baseline - c.drop))
    return points, skipped


def _area(p50_ms: float, slowest: float) -> float:
    """Marker area in points^2, proportional to latency; a fixed one when not measured."""
    if not math.isfinite(p50_ms) or slowest <= 0:
        return 60.0
    return 30.0 + 470.0 * max(p50_ms, 0.0) / slowest


def _y_range(
    points: list[_Point], *, baseline: float, gate: float, max_drop: float
) -> tuple[float, float]:
    """The y limits: every point, the baseline and the gate, except candidates far below the
    gate (a collapsed one would squash the interesting band): those sit on the bottom edge."""
    ys = [p.y for p in points] + [baseline, gate]
    high = max(ys)
    low = max(min(ys), gate - max(8 * max_drop, 8.0))
    pad = max((high - low) * 0.1, max_drop * 0.5, 0.5)
    return low - pad, high + pad


def _draw(
    ax: Axes, points: list[_Point], *, baseline: float, max_drop: float, skipped: int
) -> list[Line2D]:
    """Draw the points, the baseline and the gate into ``ax``; return the legend's handles."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, NullFormatter

    gate = baseline - max_drop
    bottom, top = _y_range(points, baseline=baseline, gate=gate, max_drop=max_drop)
    floor = bottom + (top - bottom) * 0.03
    ax.set_ylim(bottom, top)
    ax.set_xscale("log")
    ax.set_xlabel("model size (log scale)")
    ax.grid(True, which="major", alpha=0.3)
    ax.axhline(baseline, color="grey", linestyle=":", linewidth=1)
    ax.axhline(gate, color="#d62728", linestyle="--", linewidth=1.2)
    ax.axhspan(bottom, gate, color="#d62728", alpha=0.06, zorder=0)
    sizes = [p.candidate.size_bytes for p in points]
    if sizes:
        ax.set_xlim(min(sizes) / 1.6, max(sizes) * 1.6)
    else:
        ax.set_xlim(1e3, 1e6)
        ax.text(0.5, 0.5, "no candidate to draw", transform=ax.transAxes, ha="center", color="grey")
    latencies = [p.candidate.p50_ms for p in points if math.isfinite(p.candidate.p50_ms)]
    slowest = max(latencies, default=0.0)
    for p in points:
        _, colour, marker = STYLES[p.status]
        c = p.candidate
        area = _area(c.p50_ms, slowest) * (1.6 if p.status == "winner" else 1.0)
        y = max(p.y, floor)
        ax.scatter(
            [c.size_bytes],
            [y],
            s=area,
            marker=marker,
            c=[colour] if math.isfinite(c.p50_ms) else "none",
            edgecolors=colour,
            linewidths=1.2,
            alpha=0.85,
            zorder=4 if p.status in ("winner", "original") else 3,
        )
        label = str(p.number) if p.number else "original"
        if y > p.y:
            label += f" ({p.y:.1f}, off the scale)"
        offset = math.sqrt(area) / 2 + 1
        ax.annotate(
            label,
            (c.size_bytes, y),
            xytext=(offset, offset),
            textcoords="offset points",
            fontsize=7,
            color="#333333",
        )
        if p.status == "winner":
            ax.scatter(
                [c.size_bytes],
                [y],
                s=area * 2.2 + 200,
                facecolors="none",
                edgecolors="gold",
                linewidths=2.5,
                zorder=5,
            )
    for p in points:
        if p.status == "winner":  # after every point is placed and the limits are set
            _label_winner(ax, p, points, floor=floor)
    lo, hi = ax.get_xlim()
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: _size(x)))
    ax.xaxis.set_minor_formatter(
        FuncFormatter(lambda x, _: _size(x)) if hi / lo < 30 else NullFormatter()
    )
    ax.tick_params(axis="x", which="minor", labelsize=7)
    shown = {p.status for p in points} | ({"skipped"} if skipped else set())
    handles = [
        Line2D([], [], color="grey", linestyle=":", label=f"original: {baseline:.2f}"),
        Line2D(
            [],
            [],
            color="#d62728",
            linestyle="--",
            label=f"gate: {baseline:.2f} - {max_drop:g} = {gate:.2f}",
        ),
    ]
    for status, (label, colour, marker) in STYLES.items():
        if status in shown:
            text = f"{skipped} {label}" if status == "skipped" else label
            handles.append(Line2D([], [], linestyle="", marker=marker, color=colour, label=text))
    if any(not math.isfinite(p.candidate.p50_ms) for p in points):
        handles.append(
            Line2D(
                [],
                [],
                linestyle="",
                marker="o",
                markerfacecolor="none",
                color="grey",
                label="hollow: latency not measured",
            )
        )
    fastest = min(latencies, default=0.0)
    examples = [fastest, slowest] if fastest * 1.5 < slowest else [slowest]
    for ms in examples if latencies else []:
        handles.append(
            Line2D(
                [],
                [],
                linestyle="",
                marker="o",
                color="#bbbbbb",
                markersize=math.sqrt(_area(ms, slowest)),
                label=f"p50 {_ms(ms)}",
            )
        )
    return handles


def _label_winner(ax: Axes, winner: _Point, points: list[_Point], *, floor: float) -> None:
    """Name the winner in a box beside it, on the side that hides the fewest other points."""
    c = winner.candidate
    text = f"winner: {_tex(c.candidate)}\n{_size(c.size_bytes)}, p50 {_ms(c.p50_ms)}"
    width = max(len(line) for line in text.splitlines()) * 9 * 0.62 + 12  # points, roughly
    height = 36.0
    scale = 72 / ax.figure.dpi  # display pixels -> points
    wx, wy = ax.transData.transform((c.size_bytes, max(winner.y, floor)))
    box = ax.get_window_extent()
    rest = [(p.candidate.size_bytes, max(p.y, floor)) for p in points if p is not winner]
    others = [
        (float(x - wx) * scale, float(y - wy) * scale)
        for x, y in (ax.transData.transform(rest) if rest else [])
    ]
    gap_x, gap_y = width / 2 + 24, height / 2 + 28
    choices = [
        (0, -gap_y),
        (0, gap_y),
        (gap_x, 0),
        (-gap_x, 0),
        (gap_x, -gap_y),
        (-gap_x, -gap_y),
        (gap_x, gap_y),
        (-gap_x, gap_y),
    ]

    def cost(offset: tuple[float, float]) -> float:
        ox, oy = offset
        hidden = sum(
            abs(x - ox) < width / 2 + 8 and abs(y - oy) < height / 2 + 8 for x, y in others
        )
        cx, cy = float(wx) + ox / scale, float(wy) + oy / scale
        inside = (
            box.x0 + width / 2 / scale <= cx <= box.x1 - width / 2 / scale
            and box.y0 + height / 2 / scale <= cy <= box.y1 - height / 2 / scale
        )
        return hidden + (0 if inside else 100)

    offset = min(choices, key=cost)
    ax.annotate(
        text,
        (c.size_bytes, max(winner.y, floor)),
        xytext=offset,
        textcoords="offset points",
        ha="center",
        va="center",
        fontsize=9,
        fontweight="bold",
        color="#1b6e2d",
        arrowprops={"arrowstyle": "->", "color": "#1b6e2d", "shrinkB": 12},
        bbox={"boxstyle": "round", "fc": "white", "ec": "#1b6e2d", "alpha": 0.9},
        zorder=6,
    )


def _key(
    ax: Axes,
    result: pb.CompressResult,
    points: list[_Point],
    skipped: list[tuple[int, pb.CompressCandidate]],
) -> None:
    """The numbered list of every candidate with its verdict, coloured by status."""
    ax.set_axis_off()
    status = {p.number: p.status for p in points}
    status.update({n: "skipped" for n, _ in skipped})
    lines: list[tuple[str, str, str]] = []  # (text, colour, weight)
    for number, c in enumerate(result.candidates, start=1):
        if number > KEY_ROWS:
            lines.append((f"... and {len(result.candidates) - KEY_ROWS} more", "grey", "normal"))
            break
        _, colour, _ = STYLES[status[number]]
        weight = "bold" if status[number] == "winner" else "normal"
        lines.append((f"{number}. {_tex(_clip(c.candidate, 48))}", colour, weight))
        drawn = "" if status[number] != "skipped" else " (not drawn)"
        lines.append((f"     {_tex(_clip(c.verdict, 60))}{drawn}", "#555555", "normal"))
    if not lines:
        lines.append(("no candidates: the search tried nothing", "grey", "normal"))
    ax.text(0.0, 1.0, "candidates", transform=ax.transAxes, va="top", fontweight="bold")
    step = min(0.95 / max(len(lines), 1), 0.045)
    for i, (text, colour, weight) in enumerate(lines):
        ax.text(
            0.0,
            0.95 - i * step,
            text,
            transform=ax.transAxes,
            va="top",
            fontsize=7,
            color=colour,
            fontweight=weight,
        )


def _title(
    result: pb.CompressResult,
    points: list[_Point],
    skipped: list[tuple[int, pb.CompressCandidate]],
    *,
    max_drop: float,
) -> str:
    if result.HasField("model"):
        m = result.model
        head = f"Compression of {_tex(m.name)} v{m.parent_version} -> v{m.version}"
        head += f": winner {_tex(result.winner)}"
    elif result.winner:
        head = f"Compression search: winner {_tex(result.winner)} (not registered)"
    elif result.candidates:
        head = "Compression search: no candidate passed the gate"
    else:
        head = "Compression search: no candidates"
    passed = sum(p.status in ("winner", "passed") for p in points)
    drawn = sum(p.number > 0 for p in points)
    metric = result.original.metric or "metric"
    return (
        f"{head}\n{len(result.candidates)} candidates: {passed} passed, {drawn - passed} "
        f"rejected, {len(skipped)} skipped; {_tex(metric)}, max drop {max_drop:g} points"
    )


def _size(n: float) -> str:
    for unit, scale in (("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


def _ms(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{x:.3g} ms"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _tex(text: str) -> str:
    """Names and verdicts come from models and exceptions: a ``$`` must not start mathtext."""
    return text.replace("$", r"\$")
