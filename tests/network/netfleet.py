"""A fleet over real links: Mosquitto and ``edge-controller`` on one host, each ``edge-agent``
on a host of its own (``netns.Network``), started with ``edgefleet.demo.stack`` behind
``ip netns exec``; the operator (this process) drives it with ``edgectl`` over its own link.

Shared by ``tests/network`` and ``bench/network.py``. Everything it started is stopped and
every namespace removed when the ``with`` block ends, however it ends.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.agent.client import FailoverClient, NoDeviceAvailableError
from edgefleet.common import topics, wire
from edgefleet.demo import digits
from edgefleet.demo.processes import Processes
from edgefleet.demo.stack import (
    Agent,
    AgentSpec,
    Broker,
    Controller,
    start_agents,
    start_broker,
    start_controller,
)
from tests.e2e.conftest import Cli
from tests.network.netns import Host, Network

# The compressed hour (see the README's "Real networks"): telemetry 200 times as often as the
# default 10 s, so 18 s cut off produce the 360 samples of an hour; an MQTT keepalive of 2 s, so
# the dead link is noticed (the broker publishes the will, the agent reconnects) as a long
# outage's would be, instead of TCP riding the cut out.
TELEMETRY_S = 0.05
KEEPALIVE_S = 2
HOUR_S = 3600 * TELEMETRY_S / 10.0


def big_model(hidden: int, *, seed: int = 0) -> bytes:
    """A digits-shaped MLP with random weights, ``(64 + 10) * hidden * 4`` bytes or so."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((64, hidden), dtype=np.float32) * 0.1
    w2 = rng.standard_normal((hidden, 10), dtype=np.float32) * 0.1
    b1, b2 = np.zeros(hidden, np.float32), np.zeros(10, np.float32)
    return digits.to_onnx(w1, b1, w2, b2, name=f"big-{hidden}")


@dataclass
class Device:
    device_id: str
    host: Host
    agent: Agent


@dataclass
class NetFleet:
    name: str
    network: Network
    procs: Processes
    ctl: Host
    broker: Broker
    controller: Controller
    cli: Cli
    trusted: Path
    workdir: Path
    devices: dict[str, Device] = field(default_factory=dict)

    def device_rows(self) -> dict[str, dict[str, Any]]:
        rows = self.cli.json("devices", "list", "--fleet", self.name)
        return {r["device_id"]: r for r in rows}

    def events(self, device_id: str, limit: int = 500) -> list[dict[str, Any]]:
        return list(self.cli.json("events", "--device", device_id, "--limit", str(limit)))

    def release(self, model: bytes, name: str, version: str, *extra: str) -> str:
        path = self.workdir / f"{name}-{version}.onnx"
        path.write_bytes(model)
        self.cli.ok("model", "add", path, "--name", name)
        self.cli.ok("release", "create", name, "--version", version, *extra)
        return f"{name}:{version}"

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.tail(15)}" for p in self.procs.started)

    def wait(self, what: str, check: Any, timeout_s: float = 60.0, every: float = 0.3) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            got = check()
            if got:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout_s:g}s\n{self.logs()}")
            time.sleep(every)

    def all_on(self, release: str, ids: Sequence[str] | None = None) -> bool:
        rows = self.device_rows()
        return all(
            rows.get(d, {}).get("active_release") == release for d in (ids or list(self.devices))
        )


@contextlib.contextmanager
def net_fleet(
    workdir: Path,
    *,
    devices: int,
    agent_args: Sequence[str] = (),
    per_device_args: dict[int, Sequence[str]] | None = None,
    telemetry_interval_s: float = 1.0,
) -> Iterator[NetFleet]:
    """The controller host and ``devices`` agent hosts, each agent ready and registered."""
    tag = uuid.uuid4().hex[:6]
    name = f"net-{tag}"
    workdir.mkdir(parents=True, exist_ok=True)
    with Network(tag=tag) as network, Processes(workdir / "logs") as procs:
        ctl = network.add_host("ctl")
        hosts = [network.add_host(f"d{i}") for i in range(1, devices + 1)]
        broker = start_broker(procs, workdir, kind="mosquitto", host=ctl.address, prefix=ctl.prefix)
        controller = start_controller(
            procs,
            workdir / "controller",
            mqtt_url=broker.url,
            extra_args=["--mqtt-client-id", f"controller-{tag}"],
            host=ctl.address,
            prefix=ctl.prefix,
            insecure=True,
        )
        cli = Cli(controller.api, controller.token_file, controller.api_ca)
        trusted = workdir / "trusted.pem"
        cli.ok("keys", "init", "--out", trusted)
        specs = [
            AgentSpec(
                f"{name}-d{i}",
                name,
                {"site": f"d{i}"},
                host=h.address,
                prefix=h.prefix,
                extra_args=[*agent_args, *(per_device_args or {}).get(i, ())],
            )
            for i, h in enumerate(hosts, start=1)
        ]
        agents = start_agents(
            procs,
            specs,
            workdir=workdir,
            mqtt_url=broker.url,
            controller=controller.address,
            trusted_key=trusted,
            telemetry_interval_s=telemetry_interval_s,
            insecure=True,
        )
        fleet = NetFleet(name, network, procs, ctl, broker, controller, cli, trusted, workdir)
        for spec, host, agent in zip(specs, hosts, agents, strict=True):
            fleet.devices[spec.device_id] = Device(spec.device_id, host, agent)
        fleet.wait(
            "every device registered", lambda: set(fleet.device_rows()) == set(fleet.devices)
        )
        yield fleet


# what reached the broker the controller reads


class Listener:
    """An MQTT client of the operator's: every telemetry sample and event the devices got to
    the broker, as decoded."""

    def __init__(self, url: str, device_ids: Sequence[str]) -> None:
        host, _, port = url.removeprefix("mqtt://").rpartition(":")
        self.telemetry: dict[str, list[int]] = {d: [] for d in device_ids}  # at_ms, as arrived
        self.events: dict[str, list[tuple[int, str]]] = {d: [] for d in device_ids}
        self._lock = threading.Lock()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"op-{uuid.uuid4().hex}")
        self._subscribed = threading.Event()
        self._ids = list(device_ids)

        def on_connect(client: mqtt.Client, *_: Any) -> None:
            for d in self._ids:
                client.subscribe(topics.telemetry(d), qos=1)
                client.subscribe(topics.events(d), qos=1)
            self._subscribed.set()

        self._client.on_connect = on_connect
        self._client.on_message = self._on_message
        self._client.connect(host, int(port))
        self._client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError(f"could not subscribe at {url}")

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            if msg.topic.endswith("/telemetry"):
                with contextlib.suppress(Exception):
                    x = wire.decode_telemetry(bytes(msg.payload))
                    self.telemetry[x.device_id].append(x.at_ms)
                    return
            with contextlib.suppress(Exception):
                e = wire.decode_event(bytes(msg.payload))
                self.events[e.device_id].append((e.seq, e.kind))

    def samples_between(self, device_id: str, start_ms: int, end_ms: int) -> set[int]:
        with self._lock:
            return {t for t in self.telemetry[device_id] if start_ms <= t <= end_ms}

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


# failover across hosts


@dataclass
class FailoverRun:
    answered_local: int = 0
    answered_neighbour: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    killed_at: float = 0.0
    first_neighbour_at: float | None = None

    @property
    def first_answer_after_kill_s(self) -> float | None:
        if self.first_neighbour_at is None:
            return None
        return self.first_neighbour_at - self.killed_at


def kill_under_load(
    fleet: NetFleet,
    victim: Device,
    x: npt.NDArray[np.float32],
    *,
    release: str,
    before: int = 30,
    after: int = 40,
    timeout_s: float = 60.0,
) -> FailoverRun:
    """Stream Predicts through ``FailoverClient`` at the victim's agent; SIGKILL it after
    ``before`` local answers; stop after ``after`` answers from neighbours."""
    run = FailoverRun()
    stop = threading.Event()
    with FailoverClient(
        victim.agent.predict_endpoint,
        deadline=10.0,  # generous: a request is failed only by what no device answers
        failover_deadline=10.0,
        neighbours_refresh=3600.0,  # the neighbours it learnt before the kill
    ) as client:
        fleet.wait(
            "the victim's agent names a neighbour serving the release",
            lambda: (client.refresh(), [
                n for n in client.neighbours if n.online and n.release == release
            ])[1],
        )  # fmt: skip

        def stream() -> None:
            i = 0
            deadline = time.monotonic() + timeout_s
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    reply = client.predict({"pixels": x[i % len(x) : i % len(x) + 1]})
                except (NoDeviceAvailableError, grpc.RpcError) as exc:
                    run.failed += 1
                    run.errors.append(str(exc))
                else:
                    if reply.served_by_neighbour:
                        if run.first_neighbour_at is None:
                            run.first_neighbour_at = time.monotonic()
                        run.answered_neighbour += 1
                        if run.answered_neighbour >= after:
                            return
                    else:
                        run.answered_local += 1
                i += 1

        streamer = threading.Thread(target=stream, name="netfleet-stream", daemon=True)
        streamer.start()
        fleet.wait("local answers before the kill", lambda: run.answered_local >= before, 30, 0.01)
        victim.agent.process.signal(9)
        run.killed_at = time.monotonic()
        victim.agent.process.popen.wait(10)
        streamer.join(timeout_s + 5)
        stop.set()
    return run


def local_predicts(device: Device, n: int) -> tuple[int, str]:
    """``n`` Predicts by an app on the device itself (its namespace, its agent's endpoint):
    (how many were answered, the output)."""
    script = (
        "import sys, numpy as np\n"
        "from edgefleet.agent.client import FailoverClient\n"
        "ok = 0\n"
        "with FailoverClient(sys.argv[1], deadline=10.0, neighbours_refresh=3600.0) as c:\n"
        "    for i in range(int(sys.argv[2])):\n"
        "        try:\n"
        "            r = c.predict({'pixels': np.full((1, 64), i % 16 / 16, np.float32)})\n"
        "            ok += not r.served_by_neighbour\n"
        "        except Exception as exc:\n"
        "            print('error', exc)\n"
        "print('answered', ok)\n"
    )
    result = device.host.run(
        sys.executable, "-c", script, device.agent.predict_endpoint, str(n), check=False
    )
    out = result.stdout + result.stderr
    answered = next(
        (int(line.split()[1]) for line in out.splitlines() if line.startswith("answered ")), 0
    )
    return answered, out


def metric(device: Device, name: str) -> float | None:
    """One sample of the agent's ``/metrics``, read over the operator's link."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy
    url = f"http://{device.host.address}:{device.agent.metrics_port}/metrics"
    with opener.open(url, timeout=10) as reply:
        text = reply.read().decode()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None
