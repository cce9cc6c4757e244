"""The processes of a fleet on one machine: an MQTT broker, ``edge-controller``, ``edge-agent``s.

Each ``start_*`` spawns through ``Processes`` (so it is stopped with the rest) and returns
once the process says it is ready: the broker listens, the controller wrote
``controller.json``, each agent wrote ``agent.json`` (contracts in the README of each part).
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edgefleet.demo.errors import StartError
from edgefleet.demo.processes import (
    Managed,
    Processes,
    free_port,
    script,
    wait_for_json,
    wait_for_port,
)

START_TIMEOUT_S = 45.0


@dataclass(frozen=True)
class Broker:
    url: str
    kind: str  # "mosquitto" or "amqtt"
    process: Managed


@dataclass(frozen=True)
class Controller:
    address: str  # gRPC HOST:PORT devices reach (ArtifactService)
    api: str  # the operator API's HOST:PORT (ControllerService), for edgectl
    data_dir: Path
    process: Managed
    metrics_port: int = 0  # its Prometheus /metrics port on 127.0.0.1; 0 = not known

    @property
    def token_file(self) -> Path:
        """The admin token the controller made on its first start (0600)."""
        return self.data_dir / "admin.token"

    def admin_token(self) -> str:
        return self.token_file.read_text().strip()


@dataclass(frozen=True)
class AgentSpec:
    device_id: str
    fleet: str
    labels: Mapping[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"  # the address its Predict (and /metrics) binds
    prefix: Sequence[str] = ()  # before its command: ``ip netns exec NS`` runs it elsewhere
    extra_args: Sequence[str] = ()  # after the others


@dataclass(frozen=True)
class Agent:
    device_id: str
    fleet: str
    predict_endpoint: str
    metrics_port: int
    data_dir: Path
    process: Managed


def mosquitto_binary() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    return next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).is_file()), None
    )


def start_broker(
    procs: Processes,
    workdir: Path,
    *,
    kind: str = "auto",
    host: str = "127.0.0.1",
    prefix: Sequence[str] = (),
) -> Broker:
    """Mosquitto where installed (or asked for), else amqtt from the ``broker`` extra; it
    listens on ``host``, started behind ``prefix`` (``ip netns exec NS``) if given."""
    port = free_port()
    binary = mosquitto_binary()
    if kind == "mosquitto" or (kind == "auto" and binary is not None):
        if binary is None:
            raise StartError("mosquitto", "is not installed (apt-get install mosquitto)")
        conf = workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {port} {host}\nallow_anonymous true\npersistence false\n"
            "max_queued_messages 10000\n"
        )
        proc = procs.spawn("mosquitto", [binary, "-c", str(conf)], prefix=prefix)
        used = "mosquitto"
    else:
        if importlib.util.find_spec("amqtt") is None:
            raise StartError(
                "MQTT broker",
                "missing: install mosquitto, or the embedded one: pip install 'edgefleet[broker]'",
            )
        argv = [sys.executable, "-m", "edgefleet.demo.mqtt_broker", "--port", str(port)]
        proc = procs.spawn("amqtt", argv, prefix=prefix)
        used = "amqtt"
    wait_for_port(port, proc, timeout_s=START_TIMEOUT_S, host=host)
    return Broker(url=f"mqtt://{host}:{port}", kind=used, process=proc)


def start_controller(
    procs: Processes,
    data_dir: Path,
    *,
    mqtt_url: str,
    extra_args: Sequence[str] = (),
    timeout_s: float = START_TIMEOUT_S,
    host: str = "127.0.0.1",
    prefix: Sequence[str] = (),
) -> Controller:
    """Start ``edge-controller run`` on free ports of ``host`` (devices, operator API; loopback
    by default), behind ``prefix`` (``ip netns exec NS``) if given; ``extra_args`` go last."""
    data_dir.mkdir(parents=True, exist_ok=True)
    ready = data_dir / "controller.json"
    ready.unlink(missing_ok=True)
    address = f"{host}:{free_port()}"
    api = f"{host}:{free_port()}"
    metrics_port = free_port()
    argv = [
        *script("edge-controller", "edgefleet.controller.cli"),
        "run",
        "--data-dir", str(data_dir),
        "--grpc", address,
        "--api", api,
        "--mqtt", mqtt_url,
        "--metrics-port", str(metrics_port),
        *extra_args,
    ]  # fmt: skip
    if "--metrics-port" in extra_args:  # the last one given wins
        at = len(extra_args) - 1 - list(reversed(extra_args)).index("--metrics-port")
        metrics_port = int(extra_args[at + 1]) if at + 1 < len(extra_args) else 0
    proc = procs.spawn("controller", argv, tier=1, prefix=prefix)
    info = wait_for_json(ready, proc, timeout_s=timeout_s)
    return Controller(
        address=str(info.get("grpc") or address),
        api=str(info.get("api") or api),
        data_dir=data_dir,
        process=proc,
        metrics_port=metrics_port,
    )


def start_agents(
    procs: Processes,
    specs: Sequence[AgentSpec],
    *,
    workdir: Path,
    mqtt_url: str,
    controller: str,
    trusted_key: Path,
    telemetry_interval_s: float | None = None,
    timeout_s: float = START_TIMEOUT_S,
) -> list[Agent]:
    """Spawn every agent first, then wait for each: they start side by side."""
    spawned: list[tuple[AgentSpec, Path, Managed]] = []
    for spec in specs:
        data_dir = workdir / "agents" / spec.device_id
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / "agent.json").unlink(missing_ok=True)
        argv = [
            *script("edge-agent", "edgefleet.agent.cli"),
            "run",
            "--device-id", spec.device_id,
            "--fleet", spec.fleet,
            "--mqtt", mqtt_url,
            "--controller", controller,
            "--data-dir", str(data_dir),
            "--predict-listen", f"{spec.host}:0",
            "--metrics-port", "0",
            "--trusted-key", str(trusted_key),
        ]  # fmt: skip
        for key, value in spec.labels.items():
            argv += ["--label", f"{key}={value}"]
        if telemetry_interval_s is not None:
            argv += ["--telemetry-interval", f"{telemetry_interval_s:g}"]
        argv += spec.extra_args
        proc = procs.spawn(spec.device_id, argv, tier=2, prefix=spec.prefix)
        spawned.append((spec, data_dir, proc))
    agents = []
    for spec, data_dir, proc in spawned:
        info = wait_for_json(data_dir / "agent.json", proc, timeout_s=timeout_s)
        agents.append(
            Agent(
                device_id=spec.device_id,
                fleet=spec.fleet,
                predict_endpoint=str(info.get("predict_endpoint", "")),
                metrics_port=int(info.get("metrics_port", 0)),
                data_dir=data_dir,
                process=proc,
            )
        )
    return agents
