"""The controller sends a container release only to devices that can run containers.

Each device's status names the runtimes its agent offers (``container`` where Docker answered
it at start); a real controller stores them, and a deploy of a container release to a fleet
with devices that lack it is refused (FAILED_PRECONDITION), naming those devices, with nothing
sent. The same fleet takes an in-process release, and a fleet of container devices the
container release. The release's image is the user's own (``--image``): the runtime base in
the real dockerd.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from edgefleet.common import topics
from edgefleet.controller import images
from edgefleet.demo.digits import TrainedModel
from edgefleet.v1 import controller_pb2 as pb
from tests.controller import support
from tests.controller.conftest import ctl, device  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow


def _register(
    running: support.Running, sender: support.Device, fleet: str, **runtimes: Any
) -> None:
    for dev, offered in runtimes.items():
        sender.status(dev, fleet, runtimes=offered)
    support.eventually(
        lambda: (
            len(running.stub.ListDevices(pb.ListDevicesRequest(fleet=fleet)).devices)
            == len(runtimes)
        ),
        what="registration",
    )


def test_a_container_release_is_refused_where_devices_have_no_docker(
    ctl: support.Running,  # noqa: F811
    device: support.Device,  # noqa: F811
    docker_client: Any,
    digits_model: TrainedModel,
) -> None:
    ctl.stub.InitKey(pb.InitKeyRequest(), timeout=5)
    support.upload(ctl.stub, "digits", digits_model.onnx_bytes)
    create = ctl.stub.CreateRelease
    create(pb.CreateReleaseRequest(name="digits", version="1.0.0"), timeout=5)
    create(
        pb.CreateReleaseRequest(
            name="digits", version="2.0.0", runtime="container", image=images.RUNTIME_BASE
        ),
        timeout=60,
    )
    mixed, docker_only = support.unique("fleet"), support.unique("fleet")
    a, b, c = (support.unique("dev") for _ in range(3))
    _register(
        ctl,
        device,
        mixed,
        **{a: ("onnxruntime", "container"), b: ("onnxruntime",), c: ()},  # c: an older agent
    )
    for dev in (a, b, c):
        device.subscribe(topics.desired(dev))

    refused = support.rpc_error(
        lambda: ctl.stub.Deploy(pb.DeployRequest(release="digits:2.0.0", fleet=mixed), timeout=5)
    )
    assert refused.code is grpc.StatusCode.FAILED_PRECONDITION
    named = refused.details()
    assert "digits:2.0.0 runs in a container" in named and f"fleet {mixed}" in named
    assert ", ".join(sorted((b, c))) in named and a not in named
    listed = ctl.stub.ListRollouts(pb.ListRolloutsRequest(fleet=mixed), timeout=5).rollouts
    assert list(listed) == []

    # the same fleet takes the in-process release; a fleet of container devices the container one
    first = ctl.stub.Deploy(pb.DeployRequest(release="digits:1.0.0", fleet=mixed), timeout=5)
    assert {x.device_id for x in first.targets} == {a, b, c}
    d = support.unique("dev")
    _register(ctl, device, docker_only, **{d: ("onnxruntime", "container")})
    second = ctl.stub.Deploy(pb.DeployRequest(release="digits:2.0.0", fleet=docker_only), timeout=5)
    assert [x.device_id for x in second.targets] == [d]
