"""Crash safety of container releases: a real edge-agent process killed at each step of a switch.

The agent runs v1 in its container; v2 is offered and the agent dies (a failpoint's
``os._exit(137)``, as abrupt as SIGKILL: no cleanup, no flush) at one step of the switch. After a
restart the device has exactly one serving container of its own, the right one (v1 if the kill
came before the switch was written, v2 after), on the default bridge network only (no network
of its own to leak), and the container the dead agent left serving is adopted: the same id,
started once (docker's ``StartedAt`` unchanged). Then, without a broker, the device keeps serving
its container, and an agent restarted with the broker still down serves its last good release
from the local image.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from edgefleet.agent import containers
from edgefleet.demo.digits import DigitsData, TrainedModel
from tests.agent.conftest import Spawn
from tests.agent.helpers import (
    AgentProcess,
    ArtifactServer,
    Signer,
    Watcher,
    active_on,
    predict,
    wait_for,
)
from tests.conftest import Broker
from tests.containers.conftest import Images

pytestmark = pytest.mark.slow

# the steps before the switch is on disk: a restart serves v1, then finishes the install
BEFORE_SWITCH = ["image_pull", "after_pull", "container_started", "before_activate"]
# the steps after: a restart serves v2 at once
AFTER_SWITCH = ["after_activate_state", "after_switch", "container_remove"]


@pytest.fixture
def spawn(release_images: Images, spawn: Spawn) -> Spawn:
    """The agent tests' ``spawn``, with each device's containers and images removed at the end
    (``release_images`` first: its clean-up then runs after the processes are killed)."""

    def make(device_id: str | None = None, *, broker: Broker) -> AgentProcess:
        p = spawn(device_id, broker=broker)
        release_images.devices.append(p.device_id)
        return p

    return make


def _containers(images: Images, device_id: str) -> list[Any]:
    """The device's containers, each freshly inspected."""
    return images.ours(device_id)


def _serving(images: Images, device_id: str, release: str) -> tuple[str, str]:
    """Id and ``StartedAt`` of the device's only container, which must run ``release``."""
    found = _containers(images, device_id)
    assert [(c.status, c.labels[containers.LABEL_RELEASE]) for c in found] == [
        ("running", release)
    ], [(c.short_id, c.status, c.labels) for c in found]
    (c,) = found
    assert set(c.attrs["NetworkSettings"]["Networks"]) == {"bridge"}  # none of its own
    return c.id, c.attrs["State"]["StartedAt"]


@pytest.mark.parametrize("point", BEFORE_SWITCH + AFTER_SWITCH)
def test_an_agent_killed_mid_switch_comes_back_on_one_container_and_adopts_it(
    point: str,
    broker: Broker,
    spawn: Spawn,
    watch: Callable[[str], Watcher],
    signer: Signer,
    artifacts: ArtifactServer,
    release_images: Images,
    digits_model: TrainedModel,
    digits_model_v2: TrainedModel,
    digits_data: DigitsData,
) -> None:
    p = spawn(broker=broker)
    w = watch(p.device_id)
    p.start()
    v1 = release_images.release(signer, digits_model.onnx_bytes, version="1.0.0")
    release_images.send(w, signer, artifacts, v1, 1)
    w.wait_status(active_on(v1.ref), what="v1 active", timeout=120)
    v1_id, v1_started = _serving(release_images, p.device_id, v1.ref)

    v2 = release_images.release(signer, digits_model_v2.onnx_bytes, version="2.0.0")
    if point in ("image_pull", "after_pull"):  # so that the device pulls it
        release_images.client.images.remove(v2.manifest.image, force=True)
    p.kill()  # a real SIGKILL while idle: the next start adopts v1's container
    p.launch(failpoints=f"{point}=kill")
    release_images.send(w, signer, artifacts, v2, 2)
    assert p.wait_exit(timeout=120) == 137, p.output()
    assert f"failpoint {point}" in p.output()

    if point in BEFORE_SWITCH:
        # v1 is the right one: adopted, and nothing else left; the second start dies again just
        # before it would start v2's container, so what it did at start can be looked at
        p.launch(failpoints="before_container_start=kill")
        assert p.wait_exit(timeout=120) == 137, p.output()
        assert p.output().count("failpoint before_container_start") == 1
        assert _serving(release_images, p.device_id, v1.ref) == (v1_id, v1_started)
        assert f"adopting container {v1_id[:10]}" in p.output()
    else:
        v2_id = next(
            c.id
            for c in _containers(release_images, p.device_id)
            if c.labels[containers.LABEL_RELEASE] == v2.ref and c.status == "running"
        )
        v2_started = release_images.client.containers.get(v2_id).attrs["State"]["StartedAt"]

    info = p.start()
    w.wait_status(active_on(v2.ref), what="v2 active after the restart", timeout=120)
    assert predict(info["predict_endpoint"], {"pixels": digits_data.x_test[:2]}).release == v2.ref
    wait_for(
        "only v2's container",
        lambda: len(_containers(release_images, p.device_id)) == 1,
        timeout=60,
    )
    served = _serving(release_images, p.device_id, v2.ref)
    if point in AFTER_SWITCH:  # adopted, not restarted
        assert served == (v2_id, v2_started)
        assert f"adopting container {v2_id[:10]}" in p.output()
    assert v1_id not in {c.id for c in release_images.client.containers.list(all=True)}


def test_without_a_broker_the_device_keeps_serving_and_restarts_from_the_local_image(
    own_broker: Broker,
    spawn: Spawn,
    signer: Signer,
    artifacts: ArtifactServer,
    release_images: Images,
    digits_model: TrainedModel,
    digits_data: DigitsData,
) -> None:
    p = spawn(broker=own_broker)
    w = Watcher(own_broker.url, device_id=p.device_id)
    try:
        info = p.start()
        v1 = release_images.release(signer, digits_model.onnx_bytes, version="1.0.0")
        release_images.send(w, signer, artifacts, v1, 1)
        w.wait_status(active_on(v1.ref), what="v1 active", timeout=120)
    finally:
        w.close()
    v1_id, v1_started = _serving(release_images, p.device_id, v1.ref)
    x = digits_data.x_test[:2]

    own_broker.stop()  # the device loses its broker: the container goes on serving
    wait_for("the agent to notice the broker is gone", lambda: "lost MQTT broker" in p.output())
    assert predict(info["predict_endpoint"], {"pixels": x}).release == v1.ref
    assert _serving(release_images, p.device_id, v1.ref) == (v1_id, v1_started)

    # restarted with the broker still down: the container it left running is adopted
    p.kill()
    info = p.start()
    assert predict(info["predict_endpoint"], {"pixels": x}).release == v1.ref
    assert _serving(release_images, p.device_id, v1.ref) == (v1_id, v1_started)

    # "rebooted" (the container stopped with the agent) and no network: the last good release
    # starts again from the image on the device, nothing pulled
    p.kill()
    release_images.client.containers.get(v1_id).stop(timeout=5)
    pulls = p.output().count("pulled sha256:")
    info = p.start()
    assert predict(info["predict_endpoint"], {"pixels": x}).release == v1.ref
    new_id, _ = _serving(release_images, p.device_id, v1.ref)
    assert new_id != v1_id
    assert release_images.client.containers.get(new_id).image.id == v1.manifest.image
    assert p.output().count("pulled sha256:") == pulls
