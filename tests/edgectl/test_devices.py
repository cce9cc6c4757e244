"""``edgectl devices list``: a device's release container, as its last status named it.

A device (a plain MQTT client here, enrolled: what matters is the status it sends) reports the
container serving its active release; a real controller stores it, ``devices list --json``
returns every field, the table shows its state and memory, ``--containers`` the detail (one row
per container: state, restarts, CPU, memory and its share of the limit, image); a later status
without one (the device went back to in-process) clears it.
"""

from __future__ import annotations

import json
from typing import Any

from edgefleet.common import types as t
from edgefleet.demo.stack import Controller
from tests.controller import support
from tests.edgectl.conftest import ConnectDevice, Edgectl

IMAGE = "sha256:" + "ab" * 32
CONTAINER = t.ContainerStatus(
    release="digits:1.0.0",
    container_id="c0ffee" * 10 + "abcd",
    state="running",
    image=IMAGE,
    restarts=2,
    cpu_seconds=12.5,
    memory_bytes=84 << 20,
    memory_limit_bytes=512 << 20,
)


def _listed(edgectl: Edgectl, fleet: str) -> list[dict[str, Any]]:
    result = edgectl("devices", "list", "--fleet", fleet, "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    return list(json.loads(result.stdout))


def test_devices_list_shows_the_release_container(
    controller: Controller, edgectl: Edgectl, enrolled_device: ConnectDevice
) -> None:
    fleet, dev = support.unique("fleet"), support.unique("dev")
    device = enrolled_device(fleet, dev)
    device.status(
        dev,
        fleet,
        phase=t.InstallPhase.ACTIVE,
        active_release="digits:1.0.0",
        runtimes=("onnxruntime", "container"),
        container=CONTAINER,
        seq=1,
    )
    [listed] = support.eventually(
        lambda: [d for d in _listed(edgectl, fleet) if d["container"]], what="the container"
    )
    assert listed["container"] == {
        "release": "digits:1.0.0",
        "container_id": CONTAINER.container_id,
        "state": "running",
        "image": IMAGE,
        "restarts": 2,
        "cpu_seconds": 12.5,
        "memory_bytes": 84 << 20,
        "memory_limit_bytes": 512 << 20,
    }

    table = edgectl("devices", "list", "--fleet", fleet)
    assert table.exit_code == 0 and "digits:1.0.0" in table.stdout, table.stdout + table.stderr
    detail = edgectl("devices", "list", "--fleet", fleet, "--containers")
    assert detail.exit_code == 0, detail.stdout + detail.stderr
    assert "running" in detail.stdout and "12.5s" in detail.stdout
    assert "84.0 MiB" in detail.stdout and "(16%)" in detail.stdout

    device.status(dev, fleet, phase=t.InstallPhase.ACTIVE, active_release="digits:1.1.0", seq=2)
    support.eventually(
        lambda: [d for d in _listed(edgectl, fleet) if d["active_release"] == "digits:1.1.0"],
        what="the next status",
    )
    [back] = _listed(edgectl, fleet)
    assert back["container"] is None
    empty = edgectl("devices", "list", "--fleet", fleet, "--containers")
    assert "no device serves a container release" in empty.stdout + empty.stderr
