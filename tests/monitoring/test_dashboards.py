"""Dashboards, rules and provisioning read only metrics that exist, and hang together."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from tests.monitoring import catalogue
from tests.monitoring.expressions import (
    GRAFANA,
    PROMETHEUS,
    Expression,
    all_dashboard_expressions,
    dashboard_files,
    load_json,
    panels,
    recorded,
    rule_expressions,
)
from tests.monitoring.promql import (
    GRAFANA_MACROS,
    expand_macros,
    metric_names,
    outside_strings,
    variable_query_expr,
)

EXPECTED_DASHBOARDS = {
    "fleet-overview.json": "edgefleet-fleet",
    "device-detail.json": "edgefleet-device",
    "release-comparison.json": "edgefleet-releases",
    "rollout-progress.json": "edgefleet-rollouts",
}


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'sum by (fleet) (rate(edgefleet_inference_requests_total{fleet=~"$fleet"}'
            "[$__rate_interval]))",
            {"edgefleet_inference_requests_total"},
        ),
        (
            "histogram_quantile(0.95, sum by (le, release) (rate(a_bucket[5m])"
            ' * on (instance) group_left (release) b_info{x="y"}))',
            {"a_bucket", "b_info"},
        ),
        ("x > 1.25 * (x offset 1h) and on (fleet) y:z == 1", {"x", "y:z"}),
        ('label_replace(vector(40), "fleet", "a_b", "", "") or 1e3 * foo', {"foo"}),
        ("sum(x) by (a) / count without (b) (y) unless z offset -5m", {"x", "y", "z"}),
        ("max_over_time(x[1h:5m]) @ start() > bool Inf", {"x"}),
        ('ALERTS{alertname=~"EdgeFleet.*"}', {"ALERTS"}),
    ],
)
def test_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_a_typo_is_an_unknown_name() -> None:
    typo = "sum(rate(edgefleet_inference_request_total[5m]))"
    assert metric_names(typo) - catalogue.known_series() == {"edgefleet_inference_request_total"}


def test_variable_queries() -> None:
    assert variable_query_expr('label_values(x{a="b"}, fleet)') == 'x{a="b"}'
    assert variable_query_expr("label_values(fleet)") is None
    assert variable_query_expr("query_result(x)") is None


def unknown(expressions: list[Expression], allowed: set[str]) -> list[str]:
    return [
        f"{e.where}: {sorted(metric_names(e.expr) - allowed)}"
        for e in expressions
        if metric_names(e.expr) - allowed
    ]


def test_rules_read_only_known_metrics() -> None:
    records = recorded()
    assert all(":" in name for name in records), "recording rules are named level:metric:ops"
    assert not set(records) & catalogue.known_series()
    assert unknown(rule_expressions(), set(catalogue.known_series()) | set(records)) == []


def test_dashboards_read_only_known_metrics() -> None:
    allowed = set(catalogue.known_series()) | set(recorded())
    expressions = all_dashboard_expressions()
    assert len(expressions) > 40
    assert unknown(expressions, allowed) == []


def test_every_exported_metric_is_on_a_dashboard() -> None:
    used = set().union(*(metric_names(e.expr) for e in all_dashboard_expressions()))
    used |= set().union(*(metric_names(e.expr) for e in rule_expressions()))
    families = catalogue.AGENT + catalogue.CONTROLLER
    assert [m.name for m in families if not set(m.series()) & used] == []


def test_dashboard_files() -> None:
    assert {p.name: load_json(p)["uid"] for p in dashboard_files()} == EXPECTED_DASHBOARDS


@pytest.mark.parametrize("name", sorted(EXPECTED_DASHBOARDS))
def test_dashboard_structure(name: str) -> None:
    board = load_json(GRAFANA / "dashboards" / name)
    assert board["title"].startswith("EdgeFleet / ")
    assert "edgefleet" in board["tags"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in panels(board):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            used = set(re.findall(r"\$\{?(\w+)", target["expr"]))
            assert used <= set(variables) | {m.strip("${}") for m in GRAFANA_MACROS}
            # variables only inside label matchers: the rest must be PromQL after macros
            assert "$" not in outside_strings(expand_macros(target["expr"])), panel["title"]


def test_datasource_provisioning() -> None:
    config = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    [source] = config["datasources"]
    assert (source["type"], source["url"], source["isDefault"]) == (
        "prometheus",
        "http://prometheus:9090",
        True,
    )
    scrape = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["global"]
    assert source["jsonData"]["timeInterval"] == scrape["scrape_interval"]


def test_dashboard_provisioning() -> None:
    config = yaml.safe_load((GRAFANA / "provisioning/dashboards/edgefleet.yml").read_text())
    [provider] = config["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/var/lib/grafana/dashboards")


def test_agent_targets_example() -> None:
    groups = json.loads((PROMETHEUS / "targets" / "agents.json").read_text())
    for group in groups:
        assert all(re.fullmatch(r"[\w.-]+:\d+", t) for t in group["targets"])
        assert set(group["labels"]) >= {"device", "fleet"}
