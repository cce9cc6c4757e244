"""A real three-node NATS cluster with its MQTT interface, for the broker-choice tests.

Each node runs ``nats-server`` with JetStream (NATS keeps MQTT sessions, retained messages and
unacknowledged QoS 1 messages in JetStream streams), a ``server_name``, a route to every other
node, and ``mqtt { stream_replicas: 3 }`` so that those streams survive the loss of a node.
Nodes listen on free loopback ports of their own; ``kill`` is SIGKILL.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import free_port, wait_port


def nats_binary() -> str | None:
    for candidate in (shutil.which("nats-server"), "/usr/sbin/nats-server", "/usr/bin/nats-server"):
        if candidate and Path(candidate).exists():
            return candidate
    return None


class Node:
    def __init__(self, workdir: Path, name: str, cluster_port: int) -> None:
        self.name = name
        self.client_port, self.mqtt_port, self.http_port = free_port(), free_port(), free_port()
        self.cluster_port = cluster_port
        self.store = workdir / name
        self.conf = workdir / f"{name}.conf"
        self.log = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.mqtt_port}"

    def configure(self, cluster: str, routes: list[int]) -> None:
        route_urls = ", ".join(f'"nats-route://127.0.0.1:{p}"' for p in routes)
        self.conf.write_text(
            f'server_name: "{self.name}"\n'
            f"listen: 127.0.0.1:{self.client_port}\n"
            f"http: 127.0.0.1:{self.http_port}\n"
            f'jetstream {{ store_dir: "{self.store}" }}\n'
            f"mqtt {{ listen: 127.0.0.1:{self.mqtt_port}, stream_replicas: 3 }}\n"
            f'cluster {{ name: "{cluster}", listen: 127.0.0.1:{self.cluster_port}, '
            f"routes: [{route_urls}] }}\n"
        )

    def configure_alone(self, extra: str = "") -> None:
        """One node, no cluster; ``extra`` goes last (an ``authorization`` block)."""
        self.conf.write_text(
            f'server_name: "{self.name}"\n'
            f"listen: 127.0.0.1:{self.client_port}\n"
            f"http: 127.0.0.1:{self.http_port}\n"
            f'jetstream {{ store_dir: "{self.store}" }}\n'
            f"mqtt {{ listen: 127.0.0.1:{self.mqtt_port} }}\n{extra}\n"
        )

    def reload(self, timeout: float = 30.0) -> None:
        """SIGHUP: the node reads its config file again (permissions, users). Returns once the
        node has logged that it applied it (the reload is asynchronous)."""
        assert self.proc is not None
        done = self._reloads()
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while self._reloads() <= done:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-10:])
                raise AssertionError(f"{self.name} never applied its reloaded config:\n{tail}")
            time.sleep(0.05)

    def _reloads(self) -> int:
        """How many reloads the node has logged as applied so far."""
        if not self.log.exists():
            return 0
        return self.log.read_text(errors="replace").count("Reloaded server configuration")

    def start(self, binary: str) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [binary, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT
            )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def monitor(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=5) as r:
            return json.load(r)

    def mqtt_clients(self) -> set[str]:
        """The MQTT client ids connected to this node now."""
        conns = self.monitor("/connz?limit=100000")["connections"] or []
        return {c["mqtt_client"] for c in conns if c.get("mqtt_client")}


class NatsCluster:
    def __init__(self, binary: str, workdir: Path, *, nodes: int = 3) -> None:
        self.binary = binary
        workdir.mkdir(parents=True, exist_ok=True)
        ports = [free_port() for _ in range(nodes)]
        self.nodes = [Node(workdir, f"n{i}", port) for i, port in enumerate(ports)]
        for node in self.nodes:
            node.configure("edgefleet-test", [p for p in ports if p != node.cluster_port])

    def urls(self, first: int) -> str:
        """Every node's MQTT URL, comma-separated, starting with node ``first``."""
        order = self.nodes[first:] + self.nodes[:first]
        return ",".join(n.url for n in order)

    def start(self, timeout: float = 60.0) -> None:
        for node in self.nodes:
            node.start(self.binary)
        for node in self.nodes:
            wait_port(node.mqtt_port, timeout)
        deadline = time.monotonic() + timeout
        for node in self.nodes:  # the first MQTT client of an account creates its streams
            while not probe(node.mqtt_port):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"NATS node {node.name} never took an MQTT client")
                time.sleep(0.5)

    def restart(self, i: int, timeout: float = 90.0) -> None:
        """Start node ``i`` again (its JetStream store kept) and wait until every node says
        it is healthy (``/healthz``: JetStream caught up) and node ``i`` takes MQTT clients."""
        node = self.nodes[i]
        node.start(self.binary)
        wait_port(node.mqtt_port, timeout)
        deadline = time.monotonic() + timeout
        while not (all(healthy(n) for n in self.nodes) and probe(node.mqtt_port)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"NATS node {node.name} never rejoined")
            time.sleep(0.5)

    def close(self) -> None:
        for node in self.nodes:
            node.stop()

    def where(self, client_id: str) -> list[str]:
        """The live nodes ``client_id`` is connected to."""
        return [n.name for n in self.nodes if n.proc is not None and client_id in n.mqtt_clients()]


def healthy(node: Node) -> bool:
    try:
        return bool(node.monitor("/healthz").get("status") == "ok")
    except OSError:  # not up yet, or answering 503 while it catches up
        return False


def probe(port: int, timeout: float = 10.0, *, user: tuple[str, str] | None = None) -> bool:
    """One MQTT connect and subscribe answered by the node on ``port``."""
    done: list[bool] = []
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{port}", clean_session=True)
    if user is not None:
        c.username_pw_set(*user)
    c.on_connect = lambda cl, _u, _f, rc, _p: (
        cl.subscribe("ef/v1/probe", 1) if not rc.is_failure else None
    )
    c.on_subscribe = lambda _c, _u, _m, rcs, _p: done.append(not any(r.is_failure for r in rcs))
    try:
        c.connect("127.0.0.1", port, keepalive=10)
    except OSError:
        return False
    c.loop_start()
    try:
        deadline = time.monotonic() + timeout
        while not done and time.monotonic() < deadline:
            time.sleep(0.1)
        return bool(done) and done[0]
    finally:
        c.disconnect()
        c.loop_stop()
