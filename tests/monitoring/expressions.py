"""Every PromQL expression the monitoring config holds, with where it is, for the checks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.monitoring.promql import metric_names, variable_query_expr

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS / "prometheus.yml"
RULES = PROMETHEUS / "rules" / "edgefleet.rules.yml"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = GRAFANA / "dashboards"


@dataclass(frozen=True)
class Expression:
    where: str
    expr: str


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.json"))


def load_json(path: Path) -> Any:
    return json.loads(path.read_text())


def panels(container: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside (collapsed) rows."""
    for panel in container.get("panels", []):
        yield panel
        yield from panels(panel)


def dashboard_expressions(path: Path) -> list[Expression]:
    board = load_json(path)
    found = []
    for panel in panels(board):
        for target in panel.get("targets", []):
            where = f"{path.name}: panel {panel['id']} {panel['title']!r} target {target['refId']}"
            found.append(Expression(where, target["expr"]))
    for var in board["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        inner = variable_query_expr(query)
        if inner is not None:
            found.append(Expression(f"{path.name}: variable {var['name']}", inner))
    return found


def all_dashboard_expressions() -> list[Expression]:
    return [e for path in dashboard_files() for e in dashboard_expressions(path)]


def rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(RULES.read_text())["groups"]
    return groups


def rule_expressions(kind: str | None = None) -> list[Expression]:
    """Expressions of every rule, or of the ``record`` or the ``alert`` rules only."""
    return [
        Expression(f"{RULES.name}: {rule.get('record') or rule['alert']}", rule["expr"])
        for group in rule_groups()
        for rule in group["rules"]
        if kind is None or kind in rule
    ]


def recorded() -> dict[str, set[str]]:
    """Recording-rule name -> the names its expression reads."""
    return {
        rule["record"]: metric_names(rule["expr"])
        for group in rule_groups()
        for rule in group["rules"]
        if "record" in rule
    }


def underlying(names: set[str]) -> set[str]:
    """``names`` with recording rules replaced, recursively, by the series they read."""
    rules = recorded()
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(rules.get(name, ()))
    return seen - set(rules)
