"""``edgectl model compress --metric-module`` and repeated ``--metric`` against a real
controller: the module's source is read here and judged there (in its confined process), the
table names the metric per output; a module that cannot be read is one error line. And
``read_metric_module``: a file, an importable module by name, the default function."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from edgefleet.demo import digits
from edgefleet.edgectl.metric_source import MetricSourceError, read_metric_module
from tests.edgectl.conftest import Edgectl, one_error_line
from tests.edgectl.test_model_compress import unique

MODULE = '''
import numpy as np

def agree(reference, candidate):
    """Top-1 agreement on the probabilities, written by hand."""
    ref = reference["probabilities"].argmax(1)
    return float(np.mean(ref == candidate["probabilities"].argmax(1)))
'''


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "240")


def test_a_metric_module_and_a_metric_judge_the_search(
    edgectl: Edgectl, digits_model_path: Path, digits_data: digits.DigitsData, tmp_path: Path
) -> None:
    name = unique("digits")
    assert edgectl("model", "add", digits_model_path, "--name", name).exit_code == 0
    data = tmp_path / "eval.npz"
    np.savez(data, pixels=digits_data.x_test)  # no labels: fidelity to the original
    module = tmp_path / "my_metric.py"
    module.write_text(MODULE)
    result = edgectl(
        "model", "compress", name, "--recipe", "int8-dynamic", "--eval-data", data,
        "--max-accuracy-drop", "5", "--objective", "size",
        "--metric-module", f"{module}:agree", "--metric", "label=top1", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    judged = [(o["output"], o["metric"]) for o in payload["original"]["outputs"]]
    assert judged == [("label", "top1-agreement"), ("*", "metric-module my_metric.py:agree")]
    (int8,) = payload["candidates"]
    assert [o["output"] for o in int8["outputs"]] == ["label", "*"]
    assert int8["drop"] == max(o["drop"] for o in int8["outputs"])

    table = edgectl(
        "model", "compress", name, "--version", "1", "--recipe", "int8-dynamic",
        "--eval-data", data, "--max-accuracy-drop", "5", "--objective", "size",
        "--metric-module", f"{module}:agree",
    )  # fmt: skip
    assert table.exit_code == 0, table.stderr
    assert "metric per output: *: metric-module my_metric.py:agree" in table.stdout

    missing = one_error_line(
        edgectl("model", "compress", name, "--eval-data", data, "--metric-module", "nope.py")
    )
    assert "--metric-module: no such file: nope.py" in missing


def test_the_source_is_read_from_a_file_or_a_module_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "textmetric.py"
    path.write_text("def score(reference, candidate):\n    return 1.0\n")
    got = read_metric_module(str(path))
    assert (got.function, got.origin) == ("score", "textmetric.py")
    assert got.source == path.read_text()
    monkeypatch.syspath_prepend(str(tmp_path))
    by_name = read_metric_module("textmetric:exact")
    assert (by_name.function, by_name.source) == ("exact", got.source)
    assert "textmetric" not in sys.modules  # found, not imported
    with pytest.raises(MetricSourceError, match="no Python source"):
        read_metric_module("no_such_module_here")
