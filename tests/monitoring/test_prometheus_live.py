"""A real Prometheus, with the shipped config and rules, answers every dashboard query.

Two sets of targets:

* stand-in exporters (``exporters``) serving every catalogue metric: runs wherever the
  ``prometheus`` binary is installed, and catches queries that cannot match well-formed series;
* real processes, from a ``monitoring_targets`` fixture returning ``harness.MonitoringTargets``
  (a running controller and agents, e.g. set up by the end-to-end tests); skipped where no
  such fixture is defined.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.monitoring import catalogue, exporters
from tests.monitoring.expressions import all_dashboard_expressions, rule_expressions
from tests.monitoring.harness import (
    MonitoringTargets,
    Prometheus,
    ScrapeTarget,
    absent_metrics,
    failures,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def prometheus_binary() -> None:
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus is not installed (apt-get install prometheus; setup.sh --dev does)")


@contextmanager
def running(tmp_path: Path, targets: MonitoringTargets) -> Iterator[Prometheus]:
    server = Prometheus(tmp_path, targets)
    server.start()
    try:
        server.wait_targets_up(len(targets.controller) + len(targets.agents))
        yield server
    finally:
        server.stop()


def check(server: Prometheus, targets: MonitoringTargets) -> None:
    recorded = rule_expressions("record")
    problems = failures(server, all_dashboard_expressions() + recorded, targets)
    assert problems == [], "\n".join(problems) + "\n" + server.log_tail()
    # alerts evaluate (no data is fine: nothing should be firing)
    alerts = rule_expressions("alert")
    errors = [f"{e.where}: {err}" for e in alerts if (err := server.query(e.expr)[1])]
    assert errors == []
    expected = {s for m in catalogue.AGENT + catalogue.CONTROLLER for s in m.series()}
    assert absent_metrics(server, expected - targets.may_be_absent) == []


@pytest.mark.usefixtures("prometheus_binary")
def test_queries_against_stand_in_exporters(tmp_path: Path) -> None:
    with (
        exporters.serving(exporters.controller_registry()) as controller,
        exporters.serving(exporters.agent_registry()) as agent,
    ):
        targets = MonitoringTargets(
            controller=(ScrapeTarget(controller),),
            agents=(ScrapeTarget(agent, exporters.AGENT_LABELS),),
            variables={"device": "d1"},
        )
        with running(tmp_path, targets) as server:
            check(server, targets)


@pytest.fixture
def live_targets(request: pytest.FixtureRequest) -> MonitoringTargets:
    try:
        targets = request.getfixturevalue("monitoring_targets")
    except pytest.FixtureLookupError:
        pytest.skip(
            "no `monitoring_targets` fixture (a running controller and agents); "
            "define one returning tests.monitoring.harness.MonitoringTargets to run this"
        )
    assert isinstance(targets, MonitoringTargets)
    return targets


@pytest.mark.usefixtures("prometheus_binary")
def test_queries_against_running_processes(tmp_path: Path, live_targets: MonitoringTargets) -> None:
    with running(tmp_path, live_targets) as server:
        check(server, live_targets)
