"""``edgectl model compress`` against a real controller: the candidate table, the registered
winner, the Markdown report, the chart (``--plot``), exit code 3 when nothing passes, and
one-line errors."""

from __future__ import annotations

import json
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgefleet.demo import digits
from edgefleet.edgectl.app import app
from tests.conftest import free_port
from tests.edgectl.conftest import Edgectl, one_error_line

RECIPE = "prune-structured-30+cluster-5bit+huffman"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "240")  # nine columns fold past reading at 80


@pytest.fixture
def eval_npz(tmp_path: Path, digits_data: digits.DigitsData) -> Path:
    path = tmp_path / "eval.npz"
    np.savez(path, pixels=digits_data.x_test, labels=digits_data.y_test)
    return path


@pytest.fixture
def model_name(edgectl: Edgectl, digits_model_path: Path) -> str:
    name = unique("digits")
    added = edgectl("model", "add", digits_model_path, "--name", name)
    assert added.exit_code == 0, added.stderr
    return name


def test_compress_prints_the_table_and_registers_the_winner(
    edgectl: Edgectl, model_name: str, eval_npz: Path, tmp_path: Path
) -> None:
    report = tmp_path / "report.md"
    result = edgectl(
        "model", "compress", model_name, "--recipe", f"{RECIPE},int8-dynamic",
        "--eval-data", eval_npz, "--max-accuracy-drop", "1.0", "--objective", "size",
        "--report-out", report,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    for column in ("CANDIDATE", "TRANSFER", "P50 MS", "DROP", "GATE", "VERDICT"):
        assert column in out
    assert "original" in out and "int8-dynamic" in out and "PASS" in out
    assert f"* {RECIPE}" in out  # the winner, marked
    assert f"registered {model_name} version 2 (compressed from version 1" in out
    assert RECIPE in report.read_text()

    listed = json.loads(edgectl("model", "list", "--name", model_name, "--json").stdout)
    assert [(m["version"], m["parent_version"], m["compressed"]) for m in listed] == [
        (1, 0, False),
        (2, 1, True),
    ]
    assert 0 < listed[1]["transfer_size"] < listed[1]["size"]
    table = edgectl("model", "list", "--name", model_name)
    assert "FROM" in table.stdout and "v1" in table.stdout


def test_no_winner_exits_3_and_still_reports(
    edgectl: Edgectl, model_name: str, eval_npz: Path, tmp_path: Path
) -> None:
    report = tmp_path / "report.md"
    result = edgectl(
        "model", "compress", model_name, "--recipe", "prune-structured-50",
        "--eval-data", eval_npz, "--max-accuracy-drop", "0", "--objective", "size",
        "--report-out", report, "--json", "--cores", "3",
    )  # fmt: skip
    assert result.exit_code == 3, result.stderr
    payload = json.loads(result.stdout)
    assert payload["passed"] is False and payload["model"] is None
    (candidate,) = payload["candidates"]
    assert candidate["verdict"].startswith("fails: drop")
    assert candidate["speed_threads_nt"] == 3 and candidate["speed_rounds_nt"] > 0  # --cores 3
    low, high = candidate["speed_ratio_ci"]
    assert low <= candidate["speed_ratio"] <= high
    assert report.read_text()
    listed = json.loads(edgectl("model", "list", "--name", model_name, "--json").stdout)
    assert [m["version"] for m in listed] == [1]

    table = edgectl(
        "model", "compress", model_name, "--recipe", "prune-structured-50",
        "--eval-data", eval_npz, "--max-accuracy-drop", "0", "--objective", "size",
    )  # fmt: skip
    assert table.exit_code == 3
    assert "FAIL" in table.stdout and "nothing registered" in table.stderr


def test_bad_eval_data_is_one_error_line(edgectl: Edgectl, model_name: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, pixels=np.zeros((4, 63), np.float32))
    line = one_error_line(
        edgectl("model", "compress", model_name, "--recipe", "int8-dynamic", "--eval-data", bad)
    )
    assert "'pixels' is float32[4, 63]" in line
    line = one_error_line(
        edgectl("model", "compress", "nope", "--eval-data", bad, "--recipe", "int8-dynamic")
    )
    assert "unknown model: nope" in line
    missing = tmp_path / "missing.npz"
    line = one_error_line(edgectl("model", "compress", model_name, "--eval-data", missing))
    assert "no such file" in line


def test_an_unknown_objective_is_refused_by_edgectl(tmp_path: Path) -> None:
    """Refused before any call: the controller address is one nothing listens on."""
    data = tmp_path / "eval.npz"
    np.savez(data, x=np.zeros((1, 2), np.float32))
    argv = ["--controller", f"127.0.0.1:{free_port()}", "model", "compress", "m"]
    result = CliRunner().invoke(app, [*argv, "--eval-data", str(data), "--objective", "speed"])
    line = one_error_line(result)
    assert "'speed' is not one of balanced, latency, size" in line, line


def test_plot_writes_the_chart_of_every_candidate(
    edgectl: Edgectl, model_name: str, eval_npz: Path, tmp_path: Path
) -> None:
    chart = tmp_path / "charts" / "compress.svg"
    result = edgectl(
        "model", "compress", model_name, "--recipe", f"{RECIPE},prune-structured-50",
        "--eval-data", eval_npz, "--max-accuracy-drop", "1.0", "--objective", "size",
        "--plot", chart,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    png = chart.with_suffix(".png")
    assert f"chart: {chart}, {png}" in result.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = "\n".join(t for el in ET.parse(chart).getroot().iter() for t in (el.text, el.tail) if t)
    assert f"winner: {RECIPE}" in text
    assert f"Compression of {model_name} v1 -> v2" in text
    assert "prune-structured-50" in text and "accuracy (%)" in text

    refused = edgectl(
        "model", "compress", model_name, "--eval-data", eval_npz, "--plot", tmp_path / "c.pdf"
    )
    assert refused.exit_code == 2  # a usage error, before any search
    assert ".png or .svg" in one_error_line(refused)
