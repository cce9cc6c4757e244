"""The processes of a fleet on one machine: an MQTT broker, ``edge-controller``, ``edge-agent``s.

Each ``start_*`` spawns through ``Processes`` (so it is stopped with the rest) and returns
once the process says it is ready: the broker listens, the controller wrote
``controller.json``, each agent wrote ``agent.json`` (contracts in the README of each part).

With ``Mtls`` every hop is mTLS on certificates made for the run: ``start_mtls_broker`` runs
``edge-controller broker-config`` (the fleet CA, the broker's certificate, its ACL and CRL, the
controller's client certificate) and Mosquitto on it; ``start_controller(mtls=...)`` serves the
devices' port with mTLS and enrollment on its TLS listener; ``enroll_agents`` enrolls each
device for real (a token file, ``edge-agent enroll --ca-file --token-file``); enrolled agents
then run on ``mqtts://`` with their identity. Plaintext is never a default: it is asked for
with ``insecure=True`` (``--insecure`` on each process), as ``edgectl demo --insecure`` does.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edgefleet.demo.errors import StartError
from edgefleet.demo.processes import (
    Managed,
    Processes,
    child_env,
    free_port,
    script,
    wait_for_json,
    wait_for_port,
)
from edgefleet.edgectl.client import ControllerClient

START_TIMEOUT_S = 45.0


@dataclass(frozen=True)
class Mtls:
    """Where a run's certificates are: ``broker_dir`` (broker-config ``--out``: ca.pem, the
    broker's certificate, ACL, CRL) and the controller's data dir (``ca/``: the fleet CA and
    the controller's own client certificate)."""

    broker_dir: Path
    controller_dir: Path

    @property
    def ca_file(self) -> Path:
        return self.controller_dir / "ca" / "ca.pem"

    def controller_args(self, enroll_listen: str) -> list[str]:
        """``edge-controller run``'s arguments for mTLS devices' port and broker."""
        ca = self.controller_dir / "ca"
        return [
            "--tls", "--enroll-listen", enroll_listen,
            "--mqtt-ca", str(self.broker_dir / "ca.pem"),
            "--mqtt-cert", str(ca / "controller.crt"),
            "--mqtt-key", str(ca / "controller.key"),
            "--broker-dir", str(self.broker_dir),
        ]  # fmt: skip


@dataclass(frozen=True)
class Broker:
    url: str
    kind: str  # "mosquitto" or "amqtt"
    process: Managed
    mtls: Mtls | None = None  # set: an mTLS Mosquitto from broker-config (url is mqtts://)

    def reload_acl(self) -> None:
        """SIGHUP: Mosquitto rereads the ACL the controller rewrote on enrollment."""
        self.process.signal(signal.SIGHUP)


@dataclass(frozen=True)
class Controller:
    address: str  # gRPC HOST:PORT devices reach (ArtifactService)
    api: str  # the operator API's HOST:PORT (ControllerService), for edgectl
    data_dir: Path
    process: Managed
    metrics_port: int = 0  # its Prometheus /metrics port on 127.0.0.1; 0 = not known
    enroll: str = ""  # with mTLS: the enrollment listener's HOST:PORT; "": plaintext
    api_ca: Path | None = None  # with TLS: the CA bundle the operator API's certificate chains to

    @property
    def token_file(self) -> Path:
        """The admin token the controller made on its first start (0600)."""
        return self.data_dir / "admin.token"

    def admin_token(self) -> str:
        return self.token_file.read_text().strip()

    def client(self, token: str | None = None) -> ControllerClient:
        """A client of its operator API (TLS on ``api_ca`` when set), as admin by default."""
        return ControllerClient(
            self.api, token=self.admin_token() if token is None else token, ca_file=self.api_ca
        )


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
    peer_endpoint: str = ""  # its mTLS listener for neighbours ("": plaintext, none)

    @property
    def advertised(self) -> str:
        """The endpoint it reports to the controller and the fleet: the peer listener when
        it has one, else its Predict."""
        return self.peer_endpoint or self.predict_endpoint


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


def start_mtls_broker(
    procs: Processes, workdir: Path, *, controller_dir: Path, host: str = "127.0.0.1"
) -> Broker:
    """``edge-controller broker-config`` on the controller's data dir (it makes the fleet CA
    and the controller's client certificate there), then Mosquitto on what it wrote: mTLS,
    require_certificate, identity as username, per-device ACL, CRL."""
    binary = mosquitto_binary()
    if binary is None:
        raise StartError(
            "mosquitto",
            "is not installed: the mTLS demo needs it (apt-get install mosquitto), "
            "or run edgectl demo --insecure (plaintext, embedded amqtt)",
        )
    port = free_port()
    out = workdir / "broker"
    argv = [
        *script("edge-controller", "edgefleet.controller.cli"),
        "broker-config",
        "--data-dir", str(controller_dir),
        "--out", str(out),
        "--host", host,
        "--port", str(port),
        "--bind", host,
    ]  # fmt: skip
    made = subprocess.run(
        argv, capture_output=True, text=True, env=child_env(), timeout=START_TIMEOUT_S, check=False
    )
    if made.returncode != 0:
        raise StartError(
            "broker-config", f"exited {made.returncode}", log_tail=made.stdout + made.stderr
        )
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        "persistence false\nmax_queued_messages 10000\n"
        + ("user root\n" if os.geteuid() == 0 else "")
        + (out / "mosquitto.conf").read_text()
    )
    proc = procs.spawn("mosquitto", [binary, "-c", str(conf)])
    wait_for_port(port, proc, timeout_s=START_TIMEOUT_S, host=host)
    return Broker(
        url=f"mqtts://{host}:{port}",
        kind="mosquitto",
        process=proc,
        mtls=Mtls(broker_dir=out, controller_dir=controller_dir),
    )


def start_controller(
    procs: Processes,
    data_dir: Path,
    *,
    mqtt_url: str,
    extra_args: Sequence[str] = (),
    timeout_s: float = START_TIMEOUT_S,
    host: str = "127.0.0.1",
    prefix: Sequence[str] = (),
    mtls: Mtls | None = None,
    insecure: bool = False,
) -> Controller:
    """Start ``edge-controller run`` on free ports of ``host`` (devices, operator API; loopback
    by default), behind ``prefix`` (``ip netns exec NS``) if given; ``extra_args`` go last.
    Exactly one of: ``mtls`` (its ``controller_dir`` is ``data_dir``), the devices' port mTLS,
    the operator API TLS, the broker mTLS; or ``insecure=True``, ``--insecure``: plaintext."""
    if (mtls is None) == (not insecure):
        raise ValueError("start_controller needs mtls= (every hop mTLS) or insecure=True")
    if mtls is not None and mtls.controller_dir != data_dir:
        raise ValueError("mtls.controller_dir must be the controller's data dir")
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
        *(mtls.controller_args(f"{host}:{free_port()}") if mtls else ["--insecure"]),
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
        enroll=str(info.get("enroll") or ""),
        api_ca=Path(str(info["api_ca"])) if info.get("api_ca") else None,
    )


def enroll_agents(
    specs: Sequence[AgentSpec],
    *,
    workdir: Path,
    controller: Controller,
    ca_file: Path,
    timeout_s: float = START_TIMEOUT_S,
) -> None:
    """Enroll each device for real, side by side: a one-time token (EnrollDevice, as ``edgectl
    device enroll --token-file``) in a 0600 file, then ``edge-agent enroll --ca-file
    --token-file`` in its data dir (its key made there, a CSR, the certificate back); no
    secret in argv."""
    if not controller.enroll:
        raise StartError("controller", "serves no enrollment listener (not run with --tls)")
    tokens = workdir / "tokens"
    tokens.mkdir(mode=0o700, parents=True, exist_ok=True)
    running: list[tuple[str, subprocess.Popen[str]]] = []
    with controller.client() as client:
        for spec in specs:
            made = client.enroll_device(spec.device_id, fleet=spec.fleet, labels=dict(spec.labels))
            token_file = tokens / spec.device_id
            token_file.touch(mode=0o600, exist_ok=True)
            token_file.write_text(made.token + "\n")
            argv = [
                *script("edge-agent", "edgefleet.agent.cli"),
                "enroll",
                "--controller", controller.enroll,
                "--ca-file", str(ca_file),
                "--token-file", str(token_file),
                "--data-dir", str(workdir / "agents" / spec.device_id),
            ]  # fmt: skip
            popen = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env()
            )
            running.append((spec.device_id, popen))
    failed: list[tuple[str, int, str]] = []
    for device_id, popen in running:
        try:
            said, _ = popen.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            popen.kill()
            said, _ = popen.communicate()
        if popen.returncode != 0:
            failed.append((device_id, popen.returncode, said))
    if failed:
        device_id, code, said = failed[0]
        raise StartError(f"edge-agent enroll ({device_id})", f"exited {code}", log_tail=said)


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
    insecure: bool = False,
) -> list[Agent]:
    """Spawn every agent first, then wait for each: they start side by side. By default each
    must be enrolled (``enroll_agents``) and ``mqtt_url`` an mTLS broker's ``mqtts://`` (the
    enrolled identity is the client's); ``insecure=True``: plaintext (``--insecure``)."""
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
            *(["--insecure"] if insecure else []),
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
                peer_endpoint=str(info.get("peer_endpoint", "")),
            )
        )
    return agents
