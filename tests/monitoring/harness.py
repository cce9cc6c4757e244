"""A real Prometheus on a free port, scraping given targets with the shipped config and rules.

The config is deploy/prometheus/prometheus.yml with only what a test must change: 1 s scrape
and rule intervals, the controller's address, the agents' file_sd list in the test's own
directory, and the absolute path of the rules. So the job names, relabelling and rules that
ship are the ones the queries run against.

``MonitoringTargets`` is what a fixture named ``monitoring_targets`` returns for
``test_prometheus_live`` (processes already running, e.g. from the end-to-end tests).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import free_port, wait_port
from tests.monitoring.expressions import PROMETHEUS_CONFIG, RULES, Expression, underlying
from tests.monitoring.promql import expand_macros, metric_names

LIVE_MACROS = {"5m": "30s", "1m": "5s", "1h": "10m"}
"""Durations for ``$__rate_interval``, ``$__interval``, ``$__range`` against seconds of data."""


@dataclass(frozen=True)
class ScrapeTarget:
    address: str
    """``host:port`` serving ``/metrics``."""
    labels: Mapping[str, str] = field(default_factory=dict)
    """Target labels; agents need ``device`` and ``fleet`` as in targets/agents.json."""


@dataclass(frozen=True)
class MonitoringTargets:
    controller: tuple[ScrapeTarget, ...]
    agents: tuple[ScrapeTarget, ...]
    variables: Mapping[str, str] = field(default_factory=dict)
    """Grafana variables for the queries (``device``); unset ones match anything (``.*``)."""
    may_be_absent: frozenset[str] = frozenset()
    """Metric names these processes need not export (power, without a sensor)."""


class Prometheus:
    def __init__(self, workdir: Path, targets: MonitoringTargets) -> None:
        binary = shutil.which("prometheus")
        assert binary is not None
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.log = workdir / "prometheus.log"
        self.config = workdir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(live_config(workdir, targets)))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_port(self.port, 30, proc=self.proc)
            self.wait_ready(30)
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, timeout: float) -> None:
        """Until ``/-/ready`` says 200: the API answers 503 while the TSDB opens."""
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.port}/-/ready"
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:  # HTTPError 503 included
                if time.monotonic() > deadline:
                    raise TimeoutError(f"prometheus not ready after {timeout}s") from None
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:  # 400 for a query that does not parse
            body = json.load(exc)
        return body

    def query(self, expr: str) -> tuple[list[Any] | None, str]:
        """(result, "") or (None, the error)."""
        body = self.api("query", query=expr)
        if body.get("status") != "success":
            return None, f"{body.get('errorType')}: {body.get('error')}"
        return list(body["data"]["result"]), ""

    def wait_targets_up(self, count: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        health: list[tuple[str, str, str]] = []
        while time.monotonic() < deadline:
            active = self.api("targets", state="active")["data"]["activeTargets"]
            health = [(t["scrapeUrl"], t["health"], t["lastError"]) for t in active]
            if len(health) == count and all(h == "up" for _, h, _ in health):
                return
            time.sleep(0.5)
        raise AssertionError(f"targets not all up after {timeout}s: {health}\n{self.log_tail()}")

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


def live_config(workdir: Path, targets: MonitoringTargets) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"].update(
        {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
    )
    config["rule_files"] = [str(RULES)]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    jobs["edgefleet-controller"]["static_configs"] = [
        {"targets": [t.address], "labels": dict(t.labels)} for t in targets.controller
    ]
    agents = workdir / "targets" / "agents.json"
    agents.parent.mkdir(parents=True, exist_ok=True)
    agents.write_text(
        json.dumps([{"targets": [t.address], "labels": dict(t.labels)} for t in targets.agents])
    )
    jobs["edgefleet-agent"]["file_sd_configs"] = [{"files": [str(agents)]}]
    return config


def live_expr(expr: str, variables: Mapping[str, str]) -> str:
    """``expr`` as Grafana would send it: macros as short durations, variables filled in."""
    text = expand_macros(expr)
    for macro, live in LIVE_MACROS.items():
        text = re.sub(rf"\[{macro}\]", f"[{live}]", text)
    return re.sub(r"\$\{?(\w+)\}?", lambda m: variables.get(m[1], ".*"), text)


def failures(
    prometheus: Prometheus,
    expressions: list[Expression],
    targets: MonitoringTargets,
    *,
    timeout: float = 20.0,
) -> list[str]:
    """Queries that fail, or that return nothing though all they read should be there.

    Retried until ``timeout``: rates need two scrapes, recording rules an evaluation.
    """
    deadline = time.monotonic() + timeout
    while True:
        problems = []
        for e in expressions:
            result, error = prometheus.query(live_expr(e.expr, targets.variables))
            if result is None:
                problems.append(f"{e.where}: {error}")
            elif not result and may_have_data(e.expr, targets):
                problems.append(f"{e.where}: no data for {e.expr}")
        if not problems or time.monotonic() > deadline:
            return problems
        time.sleep(1.0)


def may_have_data(expr: str, targets: MonitoringTargets) -> bool:
    reads = underlying(metric_names(expr))
    return not reads & (targets.may_be_absent | {"ALERTS", "ALERTS_FOR_STATE"})


def absent_metrics(prometheus: Prometheus, names: set[str]) -> list[str]:
    missing = []
    for name in sorted(names):
        result, error = prometheus.query(f'count({{__name__="{name}"}})')
        if not result:
            missing.append(name + (f" ({error})" if error else ""))
    return missing
