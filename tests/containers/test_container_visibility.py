"""What a device says about its release container: status, /metrics, and a failure's log lines.

A real agent, dockerd and registry, as in ``test_container_runtime``: the serving container's
state, image, restarts, CPU and memory go into the device status and onto ``/metrics``
(labelled by release); when a container release fails its health window, the end of its
container's log is in the ``rolled_back`` event, bounded and escaped.
"""

from __future__ import annotations

import contextlib
import urllib.request
from pathlib import Path

import grpc
from prometheus_client.parser import text_string_to_metric_families

from edgefleet.agent import config, containers
from edgefleet.agent.daemon import Agent
from edgefleet.common import types as t
from edgefleet.demo.digits import DigitsData, TrainedModel
from tests.agent.helpers import (
    ArtifactServer,
    Signer,
    active_on,
    predict,
    wait_for,
)
from tests.containers.conftest import ContainerAgent, Images


def _scrape(port: int | None) -> dict[tuple[str, str], float]:
    """``(sample name, release label) -> value`` of the agent's container families."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {
        (s.name, s.labels.get("release", "")): s.value
        for family in text_string_to_metric_families(text)
        if family.name.startswith("edgefleet_container_")
        for s in family.samples
    }


def test_the_serving_container_is_in_the_status_and_on_metrics(
    container_agent: ContainerAgent,
    signer: Signer,
    artifacts: ArtifactServer,
    release_images: Images,
    digits_model: TrainedModel,
    digits_data: DigitsData,
) -> None:
    a, w = container_agent
    release = release_images.release(signer, digits_model.onnx_bytes, version="1.0.0")
    release_images.send(w, signer, artifacts, release, 1)
    w.wait_status(active_on(release.ref), what="container release active", timeout=120)
    for _ in range(20):  # some CPU to count
        predict(a.endpoint, {"pixels": digits_data.x_test[:8]})

    status = w.wait_status(
        lambda s: s.container is not None and s.container.memory_bytes > 0,
        what="a status naming the serving container with its figures",
        timeout=60,
    )
    c = status.container
    assert c is not None
    (running,) = release_images.ours(a.device_id)
    assert c.release == "digits:1.0.0" and c.container_id == running.id
    assert c.state == "running" and c.image == release.manifest.image and c.restarts == 0
    assert c.cpu_seconds > 0 and 0 < c.memory_bytes <= c.memory_limit_bytes
    assert c.memory_limit_bytes == containers.ContainerSettings().memory_bytes

    def scraped() -> dict[tuple[str, str], float] | None:
        figures = _scrape(a.endpoints.metrics_port)
        return figures if ("edgefleet_container_cpu_seconds", "digits:1.0.0") in figures else None

    figures = wait_for("container figures on /metrics", scraped)
    assert figures[("edgefleet_container_restarts", "digits:1.0.0")] == 0
    assert figures[("edgefleet_container_cpu_seconds", "digits:1.0.0")] > 0
    assert figures[("edgefleet_container_memory_bytes", "digits:1.0.0")] > 0
    assert figures[("edgefleet_container_info", "digits:1.0.0")] == 1


def test_a_container_that_dies_in_its_health_window_leaves_its_log_in_rolled_back(
    container_agent: ContainerAgent,
    signer: Signer,
    artifacts: ArtifactServer,
    release_images: Images,
    digits_model: TrainedModel,
    digits_model_v2: TrainedModel,
    digits_data: DigitsData,
) -> None:
    a, w = container_agent
    good = release_images.release(signer, digits_model.onnx_bytes, version="1.0.0")
    release_images.send(w, signer, artifacts, good, 1)
    w.wait_status(active_on(good.ref), what="good release active", timeout=120)
    (old,) = release_images.ours(a.device_id)

    watched = release_images.release(
        signer,
        digits_model_v2.onnx_bytes,
        version="1.1.0",
        health=t.HealthPolicy(smoke_inference=True, health_window_s=300.0),
    )
    release_images.send(w, signer, artifacts, watched, 2)
    w.wait_status(
        lambda s: s.active_release == "digits:1.1.0" and s.phase is t.InstallPhase.HEALTH_CHECK,
        what="1.1.0 active in its health window",
        timeout=120,
    )
    (new,) = [c for c in release_images.ours(a.device_id) if c.id != old.id]
    new.kill()  # it dies; dockerd keeps its log until the agent removes it

    def clients_fail() -> bool:
        """Predict calls the dead container fails: what the health window counts."""
        with contextlib.suppress(grpc.RpcError):
            predict(a.endpoint, {"pixels": digits_data.x_test[:1]})
        return any(e.kind == "rolled_back" for e in w.events)

    wait_for("a rollback after failed Predict calls", clients_fail, timeout=60, every=0.2)
    event = w.wait_event("rolled_back", generation=2)
    assert "1.1.0 failed its health window" in event.message
    _, sep, lines = event.message.partition("; its last log lines: ")
    assert sep and "serving digits:1.1.0" in lines
    assert len(lines.encode()) <= containers.LOG_BYTES
    assert lines.count("\\n") < containers.LOG_LINES and "\n" not in lines
    status = w.wait_status(lambda s: s.active_release == "digits:1.0.0", what="back on 1.0.0")
    assert "last log lines" not in status.last_error  # the event has them, not the table cell
    assert predict(a.endpoint, {"pixels": digits_data.x_test[:1]}).release == "digits:1.0.0"
    wait_for(
        "only the old container",
        lambda: [c.id for c in release_images.ours(a.device_id)] == [old.id],
    )


def test_no_containers_keeps_the_agent_in_process_where_docker_answers(
    docker_client: object, signer: Signer, tmp_path: Path
) -> None:
    flags = {
        "device_id": "no-docker",
        "trusted_keys": (signer.key_file,),
        "data_dir": tmp_path,
        "containers": False,  # --no-containers (EDGEFLEET_AGENT_CONTAINERS=0)
    }
    agent = Agent(config.load(file=None, env={}, flags=flags))
    try:
        assert agent.containers is None and agent.container_watch is None
        assert agent.reporter.status.runtimes == ("onnxruntime",)
    finally:
        agent.stop()
    env = {"EDGEFLEET_AGENT_CONTAINERS": "0"}
    others = {k: v for k, v in flags.items() if k != "containers"}
    assert not config.load(file=None, env=env, flags=others).containers
    assert config.load(file=None, env={}, flags=others).containers  # on unless told
