"""The demo's outage: SIGKILL one device's agent under a stream of requests, then bring it back.

A local app on that device sends test digits one after another through ``FailoverClient``
(the client local apps use). Halfway the agent is SIGKILLed, without a goodbye; the client
notices its agent gone and asks the fleet's neighbours, which it learnt from the agent's
``ModelInfo``. Checked: every request was answered (failed = 0), some by the agent itself and
some by a neighbour, each by the release the fleet runs. Then the agent restarts on its data
directory and must rejoin: online at the controller on its new Predict endpoint, serving the
same release again, with the next requests answered locally.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import numpy as np
import numpy.typing as npt
from rich.console import Console

from edgefleet.agent.client import FailoverClient, NoDeviceAvailableError
from edgefleet.agent.identity import IdentityFiles
from edgefleet.common import rpc
from edgefleet.demo.errors import DemoFailed
from edgefleet.demo.stack import Agent
from edgefleet.edgectl.client import ControllerClient

LOCAL_BEFORE_KILL = 40  # answers from the agent itself before it is killed
BY_NEIGHBOUR = 60  # answers from neighbours before the stream stops
AFTER_RESTART = 20  # answers from the restarted agent
STREAM_TIMEOUT_S = 30.0
REJOIN_TIMEOUT_S = 30.0
DEADLINE_S = 5.0  # per request, local and to a neighbour: a dead agent is refused at once


@dataclass
class Counts:
    """What the stream got back; updated by the streaming thread, read after it stopped."""

    local: int = 0
    neighbour: int = 0
    failed: int = 0
    releases: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)

    @property
    def answered(self) -> int:
        return self.local + self.neighbour


@dataclass(frozen=True)
class OutageOutcome:
    device_id: str
    during: Counts  # the stream across the kill
    after: Counts  # the restarted agent's answers
    downtime_s: float  # from the kill to the restarted agent answering
    endpoint: str  # the restarted agent's Predict endpoint


def loopback_without_proxy() -> None:
    """gRPC honours ``http_proxy``; requests to devices on this machine must never use one."""
    hosts = [h for h in os.environ.get("no_proxy", "").split(",") if h]
    for host in ("127.0.0.1", "localhost"):
        if host not in hosts:
            hosts.append(host)
    os.environ["no_proxy"] = os.environ["NO_PROXY"] = ",".join(hosts)


def stream(
    client: FailoverClient,
    x: npt.NDArray[np.float32],
    counts: Counts,
    *,
    until: Callable[[Counts], bool],
    timeout_s: float,
) -> None:
    """Predict one digit after another until ``until(counts)`` or ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    i = 0
    while not until(counts) and time.monotonic() < deadline:
        try:
            reply = client.predict(
                {"pixels": x[i % len(x) : i % len(x) + 1]}, output_names=("label",)
            )
        except (NoDeviceAvailableError, grpc.RpcError) as exc:
            counts.failed += 1
            counts.errors.append(str(exc))
        else:
            if reply.served_by_neighbour:
                counts.neighbour += 1
            else:
                counts.local += 1
            counts.releases.add(reply.release)
        i += 1


def wait_for_neighbours(client: FailoverClient, *, release: str, timeout_s: float) -> int:
    """Until the agent's ``ModelInfo`` names an online neighbour running ``release``."""
    deadline = time.monotonic() + timeout_s
    while True:
        client.refresh()
        ready = [n for n in client.neighbours if n.online and n.release == release]
        if ready:
            return len(ready)
        if time.monotonic() >= deadline:
            raise DemoFailed(f"the agent at {client.endpoint} knows no neighbour serving {release}")
        time.sleep(0.3)


def peer_tls(agent: Agent) -> Callable[[str], rpc.ClientTls | None]:
    """A local app's credentials for the neighbours: the device's own identity, where the
    agent is enrolled (its neighbours then serve only their mTLS peer listener)."""
    if not agent.peer_endpoint:
        return lambda _device: None
    files = IdentityFiles.in_data_dir(agent.data_dir)
    return lambda device: files.client_tls(server_name=device)


def kill_and_failover(
    victim: Agent,
    x: npt.NDArray[np.float32],
    console: Console,
    *,
    release: str,
) -> tuple[Counts, float]:
    """Stream through the victim's FailoverClient, SIGKILL it midway; (counts, kill time)."""
    counts = Counts()
    with FailoverClient(
        victim.predict_endpoint,
        deadline=DEADLINE_S,
        failover_deadline=DEADLINE_S,
        neighbours_refresh=3600.0,  # the neighbours it learnt before the kill
        peer_tls=peer_tls(victim),
    ) as client:
        known = wait_for_neighbours(client, release=release, timeout_s=20.0)
        console.print(f"  {victim.device_id}'s agent knows {known} neighbour(s) serving {release}")
        streamer = threading.Thread(
            target=stream,
            args=(client, x, counts),
            kwargs={
                "until": lambda c: c.neighbour >= BY_NEIGHBOUR,
                "timeout_s": STREAM_TIMEOUT_S,
            },
            name="demo-stream",
            daemon=True,
        )
        streamer.start()
        deadline = time.monotonic() + STREAM_TIMEOUT_S
        while counts.local < LOCAL_BEFORE_KILL and streamer.is_alive():
            if time.monotonic() >= deadline:
                break
            time.sleep(0.01)
        victim.process.signal(signal.SIGKILL)
        killed_at = time.monotonic()
        victim.process.popen.wait(10)
        console.print(
            f"  SIGKILL {victim.device_id}'s agent (pid {victim.process.pid}) after "
            f"{counts.local} local answers"
        )
        streamer.join(STREAM_TIMEOUT_S + 5)
    return counts, killed_at


def wait_rejoined(
    client: ControllerClient, agent: Agent, *, release: str, timeout_s: float
) -> None:
    """Until the controller lists the device online on its new endpoint, running ``release``."""
    deadline = time.monotonic() + timeout_s
    while True:
        seen = next(
            (d for d in client.list_devices(agent.fleet) if d.device_id == agent.device_id), None
        )
        if (
            seen is not None
            and seen.online
            and seen.predict_endpoint == agent.advertised
            and seen.active_release == release
        ):
            return
        if time.monotonic() >= deadline:
            state = (
                "unknown"
                if seen is None
                else f"online={seen.online}, endpoint {seen.predict_endpoint}, "
                f"active {seen.active_release or '-'}"
            )
            raise DemoFailed(
                f"{agent.device_id} did not rejoin within {timeout_s:g}s serving {release} "
                f"on {agent.advertised} ({state})"
            )
        time.sleep(0.2)


def check_stream(counts: Counts, *, release: str, what: str) -> None:
    if counts.failed:
        raise DemoFailed(f"{what}: {counts.failed} request(s) failed, first: {counts.errors[0]}")
    if counts.releases - {release}:
        raise DemoFailed(f"{what}: answered by {sorted(counts.releases)}, not only {release}")


def after_restart(agent: Agent, x: npt.NDArray[np.float32], *, release: str) -> Counts:
    counts = Counts()
    with FailoverClient(agent.predict_endpoint, deadline=DEADLINE_S) as client:
        stream(client, x, counts, until=lambda c: c.answered >= AFTER_RESTART, timeout_s=20.0)
    check_stream(counts, release=release, what=f"{agent.device_id} after its restart")
    if counts.local < AFTER_RESTART:
        raise DemoFailed(
            f"{agent.device_id} after its restart answered {counts.local} of "
            f"{counts.answered} request(s) itself"
        )
    return counts
