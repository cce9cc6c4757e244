"""``edgectl demo``: a whole fleet on this machine, two releases rolled out and checked.

A broker, ``edge-controller`` and N ``edge-agent``s start as local processes in a temporary
directory; the digits model is trained twice (v1, v2), registered, released, deployed and
scored on every device through its Predict API. Everything started is stopped however the
run ends (error, Ctrl-C, SIGTERM); the directory goes too unless ``keep``.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from rich.console import Console
from rich.rule import Rule

from edgefleet.common.artifacts import atomic_write
from edgefleet.common.errors import EdgeFleetError
from edgefleet.demo import digits
from edgefleet.demo.errors import DemoFailed, StartError
from edgefleet.demo.evaluation import Score
from edgefleet.demo.processes import Processes
from edgefleet.demo.rounds import Round, wait_registered
from edgefleet.demo.stack import AgentSpec, start_agents, start_broker, start_controller
from edgefleet.edgectl.client import ControllerClient
from edgefleet.edgectl.output import table

MODEL = "digits"
LOG_LINES_ON_FAILURE = 15


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


@dataclass(frozen=True)
class DemoResult:
    workdir: Path
    scores: tuple[Score, ...]  # of the last round
    elapsed_s: float


def device_ids(fleet: str, n: int) -> list[str]:
    suffix = fleet.rsplit("-", 1)[-1] if "-" in fleet else ""
    return [f"edge-{suffix}{i}" for i in range(1, n + 1)]


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the ``finally`` blocks stop the processes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def step(console: Console, text: str) -> Iterator[None]:
    start = time.monotonic()
    with console.status(text):
        yield
    console.print(f"[green]✓[/] {text} [dim]({time.monotonic() - start:.1f}s)[/]")


def show_logs(console: Console, logs: Path, exc: BaseException) -> None:
    if isinstance(exc, StartError):
        console.print(Rule(f"last lines of {exc.name}'s log"))
        console.print(exc.log_tail or "(empty)", markup=False, highlight=False)
        return
    for log in sorted(logs.glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()[-LOG_LINES_ON_FAILURE:]
        console.print(Rule(f"last lines of {log.name}"))
        console.print("\n".join(lines) or "(empty)", markup=False, highlight=False)


def run(options: DemoOptions, console: Console) -> DemoResult:
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="edgefleet-demo-"))
    try:
        try:
            with sigterm_as_interrupt(), Processes(workdir / "logs") as procs:
                scores = _run(options, console, workdir, procs)
        except EdgeFleetError as exc:
            show_logs(console, workdir / "logs", exc)
            raise
        except KeyboardInterrupt:
            console.print("[yellow]interrupted: stopped every process the demo started[/]")
            raise
        return DemoResult(workdir, scores, time.monotonic() - started)
    finally:
        if options.keep:
            console.print(f"kept {workdir} (logs in {workdir / 'logs'})")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _run(
    options: DemoOptions, console: Console, workdir: Path, procs: Processes
) -> tuple[Score, ...]:
    ids = device_ids(options.fleet, options.devices)
    with step(console, "starting an MQTT broker"):
        broker = start_broker(procs, workdir, kind=options.broker)
    console.print(f"  {broker.kind} on {broker.url}")
    with step(console, "starting edge-controller"):
        controller = start_controller(procs, workdir / "controller", mqtt_url=broker.url)
    console.print(f"  operator API on {controller.api}, devices on {controller.address}")
    console.print(f"  admin token in {controller.token_file}")
    with ControllerClient(controller.api, token=controller.admin_token()) as client:
        with step(console, "creating the release-signing key"):
            key = client.init_key()
            trusted = workdir / "trusted-key.pem"
            atomic_write(trusted, key.public_key_pem.encode())
        console.print(f"  {key.key_id}; agents trust {trusted.name}")
        with step(console, f"starting {len(ids)} edge-agents in fleet {options.fleet}"):
            start_agents(
                procs,
                [AgentSpec(d, options.fleet, {"site": "demo"}) for d in ids],
                workdir=workdir,
                mqtt_url=broker.url,
                controller=controller.address,
                trusted_key=trusted,
                telemetry_interval_s=2.0,
            )
            wait_registered(client, options.fleet, ids, timeout_s=30.0)
        with step(console, "training the digits model, v1 (32 hidden) and v2 (64 hidden)"):
            data = digits.load_data()
            v1 = digits.train(data, hidden=32, seed=0)
            v2 = digits.train(data, hidden=64, seed=1)
        console.print(f"  test accuracy: v1 {v1.accuracy:.2%}, v2 {v2.accuracy:.2%}")
        rounds = Round(client, console, workdir=workdir, fleet=options.fleet, ids=ids, data=data)
        rounds.play(v1, name=MODEL, version="1.0.0", timeout_s=options.rollout_timeout_s)
        scores = rounds.play(v2, name=MODEL, version="1.1.0", timeout_s=options.rollout_timeout_s)
        summary = table("DEVICE", "RELEASE", "PHASE", "ACCURACY", "P50 LATENCY", title="summary")
        phases = rounds.phases()
        for s in scores:
            summary.add_row(
                s.device_id, s.release, phases.get(s.device_id, "-"), f"{s.accuracy:.2%}",
                f"{s.p50_ms:.2f} ms",
            )  # fmt: skip
        console.print(summary)
        if len(scores) != len(ids):
            raise DemoFailed(f"scored {len(scores)} of {len(ids)} devices")
    return scores
