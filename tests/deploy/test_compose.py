"""deploy/compose.yaml and the Dockerfiles, checked offline (no image can be pulled here).

The YAML parses; every bind-mounted path exists; the services Prometheus scrapes are the
ones compose starts, on the ports they serve; every file a Dockerfile copies exists. Where
``docker compose`` is installed, it validates the file too.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILES = sorted((DEPLOY / "docker").glob("*.Dockerfile"))


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    return dict(compose()["services"])


def binds(service: dict[str, Any]) -> dict[str, str]:
    """Bind mounts of a service: container path -> host path (relative to deploy/)."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            out[target] = source
    return out


def command_flags(service: dict[str, Any]) -> dict[str, str]:
    return dict(a.removeprefix("--").split("=", 1) for a in service.get("command", []) if "=" in a)


def test_every_bind_mount_exists() -> None:
    for name, service in services().items():
        for target, source in binds(service).items():
            assert (DEPLOY / source).exists(), f"{name}: {source} (for {target}) is missing"


def test_monitoring_mounts_where_the_configs_expect_them() -> None:
    s = services()
    assert binds(s["prometheus"])["/etc/prometheus"] == "./prometheus"
    grafana = binds(s["grafana"])
    assert grafana["/etc/grafana/provisioning"] == "./grafana/provisioning"
    assert grafana["/var/lib/grafana/dashboards/edgefleet"] == "./grafana/dashboards"
    # the provider reads the path grafana's dashboards are mounted at
    provider = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/dashboards/edgefleet.yml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards/edgefleet"
    datasource = (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text()
    assert "http://prometheus:9090" in datasource and "prometheus" in s


def test_prometheus_scrapes_the_services_compose_starts() -> None:
    s = services()
    config = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    [controller_target] = jobs["edgefleet-controller"]["static_configs"][0]["targets"]
    host, port = controller_target.split(":")
    assert host == "controller"
    flags = command_flags(s["controller"])
    assert flags["metrics-port"] == port and flags["metrics-host"] == "0.0.0.0"
    # agents: file_sd under targets/, which compose fills with the simulated agents
    targets_dir = Path(binds(s["prometheus"])["/etc/prometheus/targets"])
    listed = json.loads((DEPLOY / targets_dir / "agents.json").read_text())
    agents = {name: svc for name, svc in s.items() if "device-id" in command_flags(svc)}
    assert len(agents) == 2
    for group in listed:
        [target] = group["targets"]
        name, port = target.split(":")
        flags = command_flags(agents[name])
        assert flags["metrics-port"] == port
        assert flags["device-id"] == group["labels"]["device"]
        assert flags["fleet"] == group["labels"]["fleet"]
        assert flags["mqtt"] == "mqtt://mosquitto:1883" and "mosquitto" in s
        assert flags["controller"].split(":")[0] == "controller"
        assert agents[name]["hostname"] == name  # so the advertised Predict endpoint resolves


def test_dockerfiles_copy_files_that_exist() -> None:
    assert {p.name for p in DOCKERFILES} >= {"controller.Dockerfile", "agent.Dockerfile"}
    # The compose stack's images; the container runtime's (runtime*.Dockerfile) build on a base
    # made from local files by deploy/docker/runtime-image.sh and are tested in tests/containers.
    for dockerfile in [p for p in DOCKERFILES if not p.name.startswith("runtime")]:
        text = dockerfile.read_text()
        assert re.search(r"^FROM python:3\.11-slim", text, re.M), dockerfile.name
        assert re.search(r"^USER (?!root)\S+", text, re.M), f"{dockerfile.name} runs as root"
        assert "HEALTHCHECK" in text and "whl" in text
        for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.M):
            *sources, _ = line.split()
            for source in sources:
                assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source} is missing"
    for name, service in services().items():
        build = service.get("build")
        if build:
            assert (COMPOSE.parent / build["context"] / build["dockerfile"]).is_file(), name


def test_docker_compose_accepts_the_file() -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("docker is not installed")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip("the docker compose plugin is not installed")
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
