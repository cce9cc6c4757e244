"""``write_compress_plot``: the chart of a compression search, from a constructed result.

The files must be a real PNG and a parseable SVG whose text names the winner, whatever the
result holds: no candidates, skipped ones (no size, NaN scores), unmeasured latency, a fidelity
metric, more candidates than the key lists, and text that looks like mathtext."""

from __future__ import annotations

import math
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from edgefleet.edgectl.compress_plot import KEY_ROWS, plot_paths, write_compress_plot
from edgefleet.v1 import controller_pb2 as pb

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
WINNER = "prune-structured-30+cluster-5bit+huffman"
NAN = math.nan


def candidate(
    name: str,
    *,
    size: int,
    p50: float,
    value: float,
    drop: float,
    passed: bool,
    verdict: str,
    metric: str = "accuracy",
) -> pb.CompressCandidate:
    return pb.CompressCandidate(
        candidate=name,
        size_bytes=size,
        transfer_bytes=size,
        p50_ms=p50,
        metric=metric,
        value=value,
        drop=drop,
        passed_gate=passed,
        verdict=verdict,
    )


ORIGINAL = candidate(
    "original", size=120_000, p50=0.2, value=0.972, drop=0.0, passed=True, verdict="reference"
)
CANDIDATES = [
    candidate("int8-dynamic", size=40_000, p50=0.25, value=0.97, drop=0.2, passed=False,
              verdict="fails: 1.25x slower than the original"),
    candidate(WINNER, size=70_000, p50=0.12, value=0.968, drop=0.4, passed=True,
              verdict="passes"),
    candidate("prune-structured-50", size=50_000, p50=0.1, value=0.93, drop=4.2, passed=False,
              verdict="fails: drop 4.20 > 1 points"),
    candidate("int4-weights", size=0, p50=NAN, value=NAN, drop=NAN, passed=False,
              verdict="skipped: int4: no MatMul to quantize"),
    candidate("prune-90", size=30_000, p50=NAN, value=0.5, drop=47.2, passed=False,
              verdict="fails the screen: drop 47.20 > 11 points on the first 64 samples"),
]  # fmt: skip


def result_with(
    candidates: list[pb.CompressCandidate], *, winner: str = "", original: bool = True
) -> pb.CompressResult:
    r = pb.CompressResult(passed=bool(winner), winner=winner, candidates=candidates)
    if original:
        r.original.CopyFrom(ORIGINAL)
    if winner:
        r.model.CopyFrom(pb.RegisteredModel(name="digits", version=2, parent_version=1))
    return r


def svg_text(path: Path) -> str:
    """All the text of an SVG (it must parse as XML)."""
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg")
    return "\n".join(t for el in root.iter() for t in (el.text, el.tail) if t)


def check_files(written: list[Path], first: Path) -> str:
    assert written[0] == first and len(written) == 2
    png = next(p for p in written if p.suffix.lower() == ".png")
    svg = next(p for p in written if p.suffix.lower() == ".svg")
    assert png.stem == svg.stem and png.parent == svg.parent
    assert png.read_bytes()[:8] == PNG_MAGIC
    return svg_text(svg)


@pytest.mark.parametrize("name", ["chart.png", "chart.svg", "sub/dir/Chart.PNG"])
def test_writes_png_and_svg_with_the_winner_named(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    written = write_compress_plot(result_with(CANDIDATES, winner=WINNER), path, max_drop=1.0)
    text = check_files(written, path)
    assert f"winner: {WINNER}" in text
    assert "digits v1 -> v2" in text  # the title: model and versions
    assert "gate: 97.20 - 1 = 96.20" in text  # baseline minus max drop
    assert "rejected: below the gate" in text and "rejected: slower than the original" in text
    assert "skipped: int4: no MatMul to quantize (not drawn)" in text  # why, in the key
    assert "1 skipped or not run" in text
    assert "hollow: latency not measured" in text  # prune-90 failed the screen: no latency
    assert "off the scale" in text  # prune-90's 50% would squash the band near the gate


def test_no_candidates(tmp_path: Path) -> None:
    text = check_files(write_compress_plot(result_with([]), tmp_path / "a.png", max_drop=1.0),
                       tmp_path / "a.png")  # fmt: skip
    assert "no candidates: the search tried nothing" in text
    empty = pb.CompressResult()  # not even the original
    text = check_files(write_compress_plot(empty, tmp_path / "b.svg", max_drop=0.0),
                       tmp_path / "b.svg")  # fmt: skip
    assert "no candidate to draw" in text


def test_only_skipped_and_nan_latency(tmp_path: Path) -> None:
    skipped = [CANDIDATES[3], CANDIDATES[4]]
    text = check_files(write_compress_plot(result_with(skipped), tmp_path / "c.png",
                                           max_drop=1.0), tmp_path / "c.png")  # fmt: skip
    assert "no candidate passed the gate" in text
    assert "prune-90" in text and "int4-weights" in text


def test_fidelity_metric_many_candidates_and_dollars(tmp_path: Path) -> None:
    def fid(i: int) -> pb.CompressCandidate:
        drop = i * 0.3
        return candidate(f"cand-${i}", size=10_000 + 1000 * i, p50=1.0 + i * 0.1,
                         value=1 - drop / 100, drop=drop, passed=drop <= 2,
                         verdict="passes" if drop <= 2 else f"fails: drop {drop:.2f} > 2 points",
                         metric="cosine-similarity")  # fmt: skip

    r = pb.CompressResult(passed=False, winner="cand-$1", candidates=[fid(i) for i in range(60)])
    r.original.CopyFrom(
        candidate("original", size=90_000, p50=1.0, value=1.0, drop=0.0, passed=True,
                  verdict="reference", metric="cosine-similarity")
    )  # fmt: skip
    text = check_files(write_compress_plot(r, tmp_path / "d.svg", max_drop=2.0), tmp_path / "d.svg")
    assert "cosine similarity to the original" in text
    assert "winner: cand-$1" in text and "(not registered)" in text
    assert f"and {60 - KEY_ROWS} more" in text


def test_plot_paths_refuses_other_suffixes(tmp_path: Path) -> None:
    assert plot_paths(tmp_path / "x.svg") == (tmp_path / "x.svg", tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"\.png or \.svg"):
        plot_paths(tmp_path / "x.pdf")
    with pytest.raises(ValueError):
        write_compress_plot(result_with([]), tmp_path / "x", max_drop=1.0)
    assert not list(tmp_path.iterdir())


def test_edgectl_starts_without_matplotlib() -> None:
    code = "import sys, edgefleet.edgectl.app; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
