"""The fleet every demo runs on: options, the narrated start of broker, controller and agents.

Shared by the quick path (``runner``) and the full story (``story``). ``step`` is the
narration: a spinner while a step runs, then one ``✓`` line with how long it took.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from edgefleet.common.artifacts import atomic_write
from edgefleet.demo import containers
from edgefleet.demo.errors import StartError
from edgefleet.demo.processes import Processes
from edgefleet.demo.rounds import wait_registered
from edgefleet.demo.stack import (
    Agent,
    AgentSpec,
    Broker,
    Controller,
    enroll_agents,
    start_agents,
    start_broker,
    start_controller,
    start_mtls_broker,
)

TELEMETRY_INTERVAL_S = 2.0


@dataclass(frozen=True)
class DemoOptions:
    devices: int = 3
    """How many agents to start."""
    fleet: str = "factory-a"
    """Their fleet; devices are named ``edge-<last part of the fleet><n>`` (edge-a1, ...)."""
    keep: bool = False
    """Leave the temporary directory (logs, data dirs, models) behind."""
    broker: str = "auto"
    """``auto`` (Mosquitto when installed, else amqtt), ``mosquitto`` or ``amqtt``."""
    rollout_timeout_s: float = 60.0
    """How long each rollout may take to converge."""
    quick: bool = False
    """Only the short path: two plain releases rolled out and scored (no compression,
    canary, failover)."""
    out: Path | None = None
    """The run directory for the full demo's artifacts; ``None``: a new one under the
    system's temporary directory."""
    hold: bool = False
    """After the full demo's summary, keep the fleet running until Ctrl-C."""
    compress_budget_s: float = 10.0
    """The compression search's time budget (``model compress --time-budget``)."""
    insecure: bool = False
    """Plaintext everywhere (``edgectl demo --insecure``); default: every hop mTLS, on
    certificates made for the run, each agent enrolled."""
    runtime: str = "auto"
    """Where releases run: ``container`` (a local registry, releases built as images, agents
    running them in Docker), ``process`` (in the agent's ONNX Runtime) or ``auto``: container
    where Docker can (``containers.choose``). ``run`` settles it before the fleet starts."""


def device_ids(fleet: str, n: int) -> list[str]:
    suffix = fleet.rsplit("-", 1)[-1] if "-" in fleet else ""
    return [f"edge-{suffix}{i}" for i in range(1, n + 1)]


@contextlib.contextmanager
def step(console: Console, text: str) -> Iterator[None]:
    start = time.monotonic()
    with console.status(text):
        yield
    console.print(f"[green]✓[/] {text} [dim]({time.monotonic() - start:.1f}s)[/]")


@dataclass(frozen=True)
class Fleet:
    """What ``start_fleet`` started: the broker, the controller, the agents by device id."""

    broker: Broker
    controller: Controller
    trusted_key: Path
    agents: dict[str, Agent]
    insecure: bool = False  # plaintext (--insecure); else mTLS, every agent enrolled
    registry: str = ""  # container releases: the demo's registry HOST:PORT; "": in-process

    @property
    def runtime(self) -> str:
        """``container`` or ``process``: where the demo's releases run."""
        return containers.CONTAINER if self.registry else containers.PROCESS

    @property
    def release_runtime(self) -> str:
        """``CreateRelease``'s runtime for the demo's releases ("": in-process)."""
        return containers.CONTAINER if self.registry else ""

    def publish(self, release: str) -> None:
        """A container release's artifact and image to the demo's registry (in-process: none)."""
        if self.registry:
            containers.push(
                release,
                registry=self.registry,
                api=self.controller.api,
                token_file=self.controller.token_file,
                ca_file=self.controller.api_ca,
            )

    @property
    def ids(self) -> list[str]:
        return list(self.agents)

    def local_endpoints(self) -> dict[str, str]:
        """Each agent's local Predict (plaintext on loopback, what a local app calls): the
        demo scores devices there, the peer listener the controller lists is mTLS for
        neighbours only."""
        return {d: a.predict_endpoint for d, a in self.agents.items()}


def start_fleet(options: DemoOptions, console: Console, workdir: Path, procs: Processes) -> Fleet:
    """Broker, controller, signing key and the agents, each step narrated; every device
    registered with the controller when it returns."""
    ids = device_ids(options.fleet, options.devices)
    specs = [agent_spec(options.fleet, d) for d in ids]
    data_dir = workdir / "controller"
    if options.insecure:
        console.print("[yellow]--insecure: every hop is plaintext (no certificates)[/]")
        with step(console, "starting an MQTT broker"):
            broker = start_broker(procs, workdir, kind=options.broker)
    else:
        if options.broker == "amqtt":
            raise StartError("amqtt", "cannot serve mTLS: use --broker mosquitto, or --insecure")
        with step(console, "making the run's certificates, starting an mTLS MQTT broker"):
            broker = start_mtls_broker(procs, workdir, controller_dir=data_dir)
    console.print(f"  {broker.kind} on {broker.url}")
    registry = ""
    extra: list[str] = []
    if options.runtime == containers.CONTAINER:
        with step(console, "starting a local OCI registry (docker-registry) for release images"):
            registry = containers.start_registry(procs, workdir)
        extra = ["--artifact-source", containers.source(registry)]
        console.print(f"  {containers.source(registry)}")
    with step(console, "starting edge-controller"):
        controller = start_controller(
            procs,
            data_dir,
            mqtt_url=broker.url,
            mtls=broker.mtls,
            insecure=options.insecure,
            extra_args=extra,
        )
    console.print(f"  operator API on {controller.api}, devices on {controller.address}")
    console.print(f"  admin token in {controller.token_file}")
    if broker.mtls is not None:
        with step(console, f"enrolling {len(ids)} devices (edge-agent enroll, token files)"):
            enroll_agents(
                specs, workdir=workdir, controller=controller, ca_file=broker.mtls.ca_file
            )
            broker.reload_acl()
        console.print(
            "  [bold]every hop is mTLS[/]: agents ↔ broker, controller ↔ broker, agents → "
            "controller, agent ↔ agent (certificates of this run's fleet CA "
            f"{broker.mtls.ca_file}; enrollment over TLS on {controller.enroll})"
        )
    with controller.client() as client:
        with step(console, "creating the release-signing key"):
            key = client.init_key()
            trusted = workdir / "trusted-key.pem"
            atomic_write(trusted, key.public_key_pem.encode())
        console.print(f"  {key.key_id}; agents trust {trusted.name}")
        with step(console, f"starting {len(ids)} edge-agents in fleet {options.fleet}"):
            agents = start_agents(
                procs,
                specs,
                workdir=workdir,
                mqtt_url=broker.url,
                controller=controller.address,
                trusted_key=trusted,
                telemetry_interval_s=TELEMETRY_INTERVAL_S,
                insecure=options.insecure,
            )
            wait_registered(client, options.fleet, ids, timeout_s=30.0)
    return Fleet(
        broker,
        controller,
        trusted,
        {a.device_id: a for a in agents},
        insecure=options.insecure,
        registry=registry,
    )


def agent_spec(fleet: str, device_id: str) -> AgentSpec:
    return AgentSpec(device_id, fleet, {"site": "demo"})
