"""Release distribution: the controller's egress for a rollout to one site, peers on.

Real parts, in this process: a real Mosquitto, a real controller with mTLS (devices' port,
enrollment, the signed roster), ``--site-devices`` devices enrolled for real and run as real
agents (their mTLS peer listeners, ONNX Runtime), all labelled ``site=site-a``. The release goes
as a canary rollout (one device first: it has no peer, the controller serves it; then the
rest of the site); desired
states name up to three devices that hold the release before the controller, so the others
download from their peers. The figure: the controller's ArtifactService bytes
(``edgefleet_controller_artifact_bytes_served_total``) against ``site_devices * model_bytes``.

Merges ``site_devices``, ``model_bytes``, ``controller_egress_bytes``, ``peer_served_bytes``,
``egress_ratio`` and ``seconds`` into ``bench/results/distribution.json`` (other keys there,
``full_bytes`` and ``delta_bytes``, belong to the delta benchmark and are kept).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from edgefleet.agent import config
from edgefleet.agent.daemon import Agent
from edgefleet.agent.enrolling import enroll
from edgefleet.agent.identity import IdentityFiles
from edgefleet.common import rpc
from edgefleet.controller.config import (
    ApiSettings,
    GrpcSettings,
    MqttSettings,
    RolloutSettings,
    Settings,
)
from edgefleet.controller.server import Controller
from edgefleet.demo import digits
from edgefleet.demo.processes import free_port
from edgefleet.edgectl.client import authorized
from edgefleet.edgectl.keys import trusted_pem
from edgefleet.v1 import controller_pb2 as pb
from edgefleet.v1 import controller_pb2_grpc

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
from containers import broker  # noqa: E402

RESULTS = HERE / "results" / "distribution.json"
FLEET, SITE = "site-bench", "site-a"
DEADLINE = 30.0
EGRESS = "edgefleet_controller_artifact_bytes_served_total"


class BenchError(RuntimeError):
    """The benchmark could not run to its end."""


def wait(what: str, probe: Callable[[], bool], *, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if probe():
            return
        time.sleep(0.1)
    raise BenchError(f"timed out waiting for {what}")


@contextlib.contextmanager
def controller(root: Path, mqtt_url: str) -> Iterator[Controller]:
    s = Settings(
        data_dir=root / "ctl",
        grpc=GrpcSettings(bind="127.0.0.1:0", grace_s=0.5, tls=True, enroll_bind="127.0.0.1:0"),
        api=ApiSettings(bind="127.0.0.1:0"),
        mqtt=MqttSettings(url=mqtt_url, client_id="bench-distribution", allow_plaintext=True),
        rollouts=RolloutSettings(tick_s=0.05),
    )
    ctl = Controller(s)
    ctl.start()
    try:
        if not ctl.mqtt.wait_connected(10):
            raise BenchError("the controller did not reach the broker")
        yield ctl
    finally:
        ctl.stop()


def operator(ctl: Controller) -> controller_pb2_grpc.ControllerServiceStub:
    token = ctl.settings.admin_token_file.read_text().strip()
    channel = authorized(rpc.channel(ctl.api_address), token)
    return controller_pb2_grpc.ControllerServiceStub(channel)


def release(stub: controller_pb2_grpc.ControllerServiceStub, model: bytes) -> str:
    def parts() -> Iterator[pb.UploadModelRequest]:
        yield pb.UploadModelRequest(header=pb.UploadHeader(name="digits", size=len(model)))
        for i in range(0, len(model), 64 * 1024):
            yield pb.UploadModelRequest(chunk=model[i : i + 64 * 1024])

    stub.UploadModel(parts(), timeout=DEADLINE)
    stub.CreateRelease(pb.CreateReleaseRequest(name="digits", version="1.0.0"), timeout=DEADLINE)
    return "digits:1.0.0"


def start_agent(ctl: Controller, root: Path, device_id: str, mqtt_url: str, keys: Path) -> Agent:
    """Enroll ``device_id`` for real (key, CSR, certificate) and start its agent."""
    assert ctl.enrollment is not None
    token = ctl.enrollment.enroll_device(device_id, fleet=FLEET, labels={"site": SITE}).token
    data = root / device_id
    ca_pem = (ctl.settings.ca_dir / "ca.pem").read_bytes()
    enroll(ctl.enroll_address, token, files=IdentityFiles.in_data_dir(data), ca_pem=ca_pem)
    agent = Agent(
        config.merge(
            {
                "mqtt": mqtt_url,
                "controller": ctl.address,
                "data_dir": data,
                "predict_listen": "127.0.0.1:0",
                "metrics_port": -1,
                "trusted_keys": (keys,),
                "telemetry_interval": 5.0,
                "labels": {"site": SITE},
            }
        )
    )
    agent.start()
    return agent


def active(agent: Agent) -> str:
    a = agent.installer.state.active
    return a.release if a is not None else ""


def rosters_complete(agents: dict[str, Agent]) -> bool:
    """Every agent's signed roster lists every agent (a peer serves listed devices only)."""
    for a in agents.values():
        roster = a.neighbours.roster
        if roster is None or any(
            roster.endpoint_of(d) != b.peer_endpoint for d, b in agents.items()
        ):
            return False
    return True


def egress(ctl: Controller) -> int:
    return int(ctl.metrics.registry.get_sample_value(EGRESS) or 0)


def measure(root: Path, site_devices: int, hidden: int) -> dict[str, Any]:
    model = digits.train(digits.load_data(), hidden=hidden, seed=0).onnx_bytes
    port = free_port()
    mqtt_url = f"mqtt://127.0.0.1:{port}"
    agents: dict[str, Agent] = {}
    with broker(root, port), controller(root, mqtt_url) as ctl:
        stub = operator(ctl)
        stub.InitKey(pb.InitKeyRequest(), timeout=DEADLINE)
        keys = root / "trusted.pem"
        keys.write_text(trusted_pem(list(stub.ListKeys(pb.ListKeysRequest()).keys)))
        name = release(stub, model)
        try:
            ids = [f"site-dev-{i:02d}" for i in range(site_devices)]
            for d in ids:
                agents[d] = start_agent(ctl, root, d, mqtt_url, keys)
            wait("all devices registered", lambda: _registered(stub) == site_devices, timeout=60)
            wait("every roster complete", lambda: rosters_complete(agents), timeout=120)
            started = time.monotonic()
            # a canary of one first: no peer holds the release yet, so the controller serves
            # it; then the rest of the site, whose desired states name the holders first
            strategy = pb.RolloutStrategy(
                strategy_kind=pb.STRATEGY_KIND_CANARY, canary="1", waves="100%", bake="1s"
            )
            stub.Deploy(
                pb.DeployRequest(release=name, fleet=FLEET, strategy=strategy), timeout=DEADLINE
            )
            wait(
                "every device active",
                lambda: all(active(a) == name for a in agents.values()),
                timeout=300,
            )
            seconds = time.monotonic() - started
            served = sum(a.peer_artifacts.served_bytes for a in agents.values() if a.peer_artifacts)
            out = egress(ctl)
        finally:
            for a in reversed(list(agents.values())):
                a.stop()
    return {
        "site_devices": site_devices,
        "model_bytes": len(model),
        "controller_egress_bytes": out,
        "site_devices_x_model_bytes": site_devices * len(model),
        "peer_served_bytes": served,
        "egress_ratio": round(out / (site_devices * len(model)), 4),
        "distribution_seconds": round(seconds, 2),
        "peer_agents": "real enrolled agents in one process (mTLS peer listeners, real fetches)",
    }


def _registered(stub: controller_pb2_grpc.ControllerServiceStub) -> int:
    page = stub.ListDevices(pb.ListDevicesRequest(fleet=FLEET, page_size=1000), timeout=10)
    return len(page.devices)


def merge(path: Path, record: dict[str, Any]) -> None:
    """Merge ``record``'s keys into the JSON object at ``path`` (others' keys kept)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    held: dict[str, Any] = {}
    if path.exists():
        with contextlib.suppress(ValueError):
            loaded = json.loads(path.read_text())
            if isinstance(loaded, dict):
                held = loaded
    held.update(record)
    path.write_text(json.dumps(held, indent=2) + "\n")


def main(argv: list[str] | None = None) -> bool:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site-devices", type=int, default=20, help="devices on the site")
    parser.add_argument("--hidden", type=int, default=512, help="digits model hidden units")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON (merged)")
    args = parser.parse_args([] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
    root = Path(tempfile.mkdtemp(prefix="ef-distribution-"))
    try:
        record = measure(root, args.site_devices, args.hidden)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    merge(args.out, record)
    print(json.dumps(record, indent=2))
    # the target: the site costs the controller well under a third of every device's download
    return bool(record["controller_egress_bytes"] < record["site_devices_x_model_bytes"] / 3)


if __name__ == "__main__":
    raise SystemExit(0 if main(sys.argv[1:]) else 1)
