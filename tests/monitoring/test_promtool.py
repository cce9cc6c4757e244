"""``promtool`` on the shipped config and rules, their unit tests, and every dashboard query.

Dashboard queries are checked by writing them into a temporary rules file as recording rules
(Grafana macros replaced by durations): ``promtool check rules`` then parses each one, no
server needed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.monitoring.expressions import (
    PROMETHEUS_CONFIG,
    RULES,
    Expression,
    all_dashboard_expressions,
)
from tests.monitoring.promql import expand_macros

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (apt-get install prometheus; setup.sh --dev does)")
    return path


def run(promtool: str, *args: str | Path, cwd: Path | None = None) -> str:
    command = [promtool, *map(str, args)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=99, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def test_check_config(promtool: str) -> None:
    output = run(promtool, "check", "config", PROMETHEUS_CONFIG)
    assert "1 rule files found" in output


def test_check_rules(promtool: str) -> None:
    output = run(promtool, "check", "rules", RULES)
    assert re.search(r"SUCCESS: \d+ rules found", output)


def test_rule_unit_tests(promtool: str) -> None:
    run(promtool, "test", "rules", "rules_test.yml", cwd=HERE)


def as_rules_file(expressions: list[Expression]) -> str:
    rules = [
        {"record": f"dashboard:expr_{i}", "expr": expand_macros(e.expr)}
        for i, e in enumerate(expressions)
    ]
    return str(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))


def test_dashboard_queries_parse(promtool: str, tmp_path: Path) -> None:
    expressions = all_dashboard_expressions()
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(as_rules_file(expressions))
    done = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        index = {f"dashboard:expr_{i}": e for i, e in enumerate(expressions)}
        named = re.sub(
            r"dashboard:expr_\d+",
            lambda m: f"{m[0]} ({index[m[0]].where})",
            done.stdout + done.stderr,
        )
        pytest.fail(f"promtool rejects dashboard queries:\n{named}")


def test_a_broken_query_is_caught(promtool: str, tmp_path: Path) -> None:
    path = tmp_path / "broken.rules.yml"
    path.write_text(as_rules_file([Expression("x", "sum by (fleet (up)")]))
    done = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert done.returncode != 0
