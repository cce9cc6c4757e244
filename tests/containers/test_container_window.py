"""A container that fails in its health window with no client calling Predict is rolled back.

The release's container passed its health check and serves; then, inside the window, it crashes
(its process killed from the host, as the OOM killer would) until dockerd's on-failure policy
has restarted it as often as the release allows load failures, or it stops for good. Each restart
counts as a runtime failure, an exit ends the window at once; the device goes back to the
previous container, which served throughout, and the ``rolled_back`` event carries the failed
container's last log lines.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest

from edgefleet.agent import containers
from edgefleet.common import types as t
from edgefleet.demo.digits import DigitsData, TrainedModel
from tests.agent.helpers import ArtifactServer, Signer, Watcher, active_on, predict, wait_for
from tests.containers.conftest import ContainerAgent, Images

pytestmark = pytest.mark.slow

WINDOW = t.HealthPolicy(smoke_inference=True, health_window_s=120.0, max_load_failures=2)


def _offer(
    w: Watcher,
    signer: Signer,
    artifacts: ArtifactServer,
    images: Images,
    model: bytes,
    *,
    version: str,
    generation: int,
    health: t.HealthPolicy | None = None,
) -> str:
    release = images.release(signer, model, version=version, health=health)
    images.send(w, signer, artifacts, release, generation)
    return release.ref


def _container_of(images: Images, device_id: str, release: str) -> Any:
    return wait_for(
        f"the running container of {release}",
        lambda: next(
            (
                c
                for c in images.ours(device_id)
                if c.labels[containers.LABEL_RELEASE] == release and c.status == "running"
            ),
            None,
        ),
    )


def test_a_container_that_crashes_or_exits_in_its_window_is_rolled_back(
    container_agent: ContainerAgent,
    signer: Signer,
    artifacts: ArtifactServer,
    release_images: Images,
    digits_model: TrainedModel,
    digits_data: DigitsData,
) -> None:
    a, w = container_agent
    model, x = digits_model.onnx_bytes, digits_data.x_test[:1]
    v1 = _offer(w, signer, artifacts, release_images, model, version="1.0.0", generation=1)
    w.wait_status(active_on(v1), what="v1 active", timeout=120)
    old = _container_of(release_images, a.device_id, v1)

    # a crash loop: killed, restarted by dockerd, killed again; two restarts reach the limit
    v2 = _offer(
        w, signer, artifacts, release_images, model, version="2.0.0", generation=2, health=WINDOW
    )
    w.wait_event("activated", generation=2, timeout=120)
    c = _container_of(release_images, a.device_id, v2)
    os.kill(int(c.attrs["State"]["Pid"]), signal.SIGKILL)

    def restarted() -> bool:
        c.reload()
        return bool(c.attrs["RestartCount"] >= 1 and c.status == "running")

    wait_for("dockerd to restart the container", restarted, timeout=60)
    os.kill(int(c.attrs["State"]["Pid"]), signal.SIGKILL)
    event = w.wait_event("rolled_back", generation=2, timeout=60)
    assert "crash loop" in event.message and "restarts" in event.message, event.message
    assert "its last log lines:" in event.message
    assert predict(a.endpoint, {"pixels": x}).release == v1
    old.reload()
    assert old.status == "running" and old.attrs["RestartCount"] == 0

    # stopped for good: no restart to wait for, the next checkup fails the window
    v3 = _offer(
        w, signer, artifacts, release_images, model, version="3.0.0", generation=3, health=WINDOW
    )
    w.wait_event("activated", generation=3, timeout=120)
    _container_of(release_images, a.device_id, v3).stop(timeout=5)
    event = w.wait_event("rolled_back", generation=3, timeout=60)
    assert "the runtime stopped in the health window" in event.message, event.message
    assert "is exited" in event.message
    status = w.wait_status(lambda s: s.phase is t.InstallPhase.ROLLED_BACK, what="rolled back")
    assert status.active_release == v1
    assert predict(a.endpoint, {"pixels": x}).release == v1
    wait_for(
        "only v1's container",
        lambda: [c.id for c in release_images.ours(a.device_id)] == [old.id],
        timeout=60,
    )
