"""deploy/compose.yaml and the Dockerfiles: checked as files, then the stack for real.

The YAML parses; every bind-mounted path exists; the services Prometheus scrapes are the
ones compose starts, on the ports they serve; every image compose starts (Grafana's aside, a
profile of its own) is one ``deploy/docker/stack-images.sh`` builds from local files. Then, with
a real dockerd and docker-compose (Debian 12's v1, or the v2 plugin), the stack is built (cached:
seconds when nothing changed), brought up under a project of the test's own on free host
ports, a release is deployed to its simulated agents with the host's edgectl and served by
both, Prometheus scrapes the controller, the registry answers; then it is torn down with its
volumes.
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


def test_every_image_is_built_here_from_local_files() -> None:
    assert {p.name for p in DOCKERFILES} >= {
        "controller.Dockerfile",
        "agent.Dockerfile",
        "services.Dockerfile",
        "stack-deps.Dockerfile",
    }
    script = (DEPLOY / "docker/stack-images.sh").read_text()
    for dockerfile in DOCKERFILES:
        text = dockerfile.read_text()
        # FROM the runtime's Debian base, or an image built from it; never a registry's
        for base in re.findall(r"^FROM (\S+)", text, re.M):
            assert base in ("edgefleet/base:bookworm", "${DEPS}"), f"{dockerfile.name}: {base}"
        if not dockerfile.name.startswith(("runtime", "stack-deps")):
            assert re.search(r"^USER (?!root)\S+", text, re.M), f"{dockerfile.name} runs as root"
            assert dockerfile.name in script, f"stack-images.sh does not build {dockerfile.name}"
    for name in ("controller", "agent"):
        assert "HEALTHCHECK" in (DEPLOY / f"docker/{name}.Dockerfile").read_text()
    built = set(re.findall(r"edgefleet/\{?([a-z,]+)\}?:dev", script)[-1].split(","))
    for name, service in services().items():
        assert "build" not in service, f"{name}: built by stack-images.sh, not by compose"
        if name != "grafana":
            repo, _, tag = service["image"].partition(":")
            assert repo.removeprefix("edgefleet/") in built and tag == "dev", name
    assert services()["grafana"]["profiles"] == ["grafana"]  # the one pulled image: opt-in


def compose_command() -> list[str]:
    """``docker compose`` (the v2 plugin) or ``docker-compose`` (v1, Debian 12's); skip if none."""
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return [docker, "compose"]
    v1 = shutil.which("docker-compose")
    if v1 is None:
        pytest.skip(
            "neither docker compose nor docker-compose is installed (deploy/setup.sh --dev)"
        )
    return [v1]


def test_docker_compose_accepts_the_file() -> None:
    result = subprocess.run(
        [*compose_command(), "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
