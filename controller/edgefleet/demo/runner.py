"""``edgectl demo``: a whole fleet on this machine, two releases rolled out and checked.

A broker, ``edge-controller`` and N ``edge-agent``s start as local processes in a temporary
directory; the digits model is trained twice (v1, v2), registered, released, deployed and
scored on every device through its Predict API. Everything started is stopped however the
run ends (error, Ctrl-C, SIGTERM); the directory goes too unless ``keep``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType

from rich.console import Console
from rich.rule import Rule

from edgefleet.common.errors import EdgeFleetError
from edgefleet.demo import containers, digits, story
from edgefleet.demo.errors import DemoFailed, StartError
from edgefleet.demo.evaluation import Score
from edgefleet.demo.fleet import DemoOptions, device_ids, start_fleet, step
from edgefleet.demo.processes import Processes
from edgefleet.demo.rounds import Round
from edgefleet.edgectl.output import table

__all__ = ["DemoOptions", "DemoResult", "run"]

MODEL = "digits"
LOG_LINES_ON_FAILURE = 15


@dataclass(frozen=True)
class DemoResult:
    workdir: Path
    scores: tuple[Score, ...]  # of the last round (the quick path)
    elapsed_s: float
    run_dir: Path | None = None  # the full demo's artifacts (summary.json, events, charts)
    steps: tuple[str, ...] = ()  # the full demo's steps, each one checked
    runtime: str = containers.PROCESS  # where its releases ran: container or process


def default_run_dir() -> Path:
    """A new directory per run under the system's temporary directory."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(tempfile.gettempdir()) / f"edgefleet-demo-run-{stamp}"


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
    """The quick path (``options.quick``) or the full story; ``DemoFailed`` when a check fails.

    ``options.runtime`` auto is settled first (``containers.choose``), said in one line; with
    containers, what the run left in Docker is removed however it ends."""
    started = time.monotonic()
    chosen = containers.choose(options.runtime, console)
    console.print(f"runtime: {chosen.runtime} ({chosen.why})")
    options = replace(options, runtime=chosen.runtime)
    workdir = Path(tempfile.mkdtemp(prefix="edgefleet-demo-"))
    run_dir = None if options.quick else (options.out or default_run_dir()).resolve()
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        console.print(f"run directory: {run_dir}")
    try:
        try:
            with sigterm_as_interrupt(), Processes(workdir / "logs") as procs:
                if run_dir is None:
                    scores = _run(options, console, workdir, procs)
                    elapsed = time.monotonic() - started
                    return DemoResult(workdir, scores, elapsed, runtime=chosen.runtime)
                told = story.play(
                    options, console, workdir=workdir, run_dir=run_dir, procs=procs,
                    started=started,
                )  # fmt: skip
                elapsed = time.monotonic() - started
                if options.hold:
                    _hold(console, workdir, options.fleet)
                return DemoResult(
                    workdir, (), elapsed, run_dir, tuple(s["step"] for s in told.steps),
                    runtime=chosen.runtime,
                )  # fmt: skip
        except EdgeFleetError as exc:
            show_logs(console, workdir / "logs", exc)
            raise
        except KeyboardInterrupt:
            console.print("[yellow]interrupted: stopped every process the demo started[/]")
            raise
    finally:
        if chosen.runtime == containers.CONTAINER:  # the processes are stopped by now
            _remove_containers(console, options)
        if run_dir is not None:
            shutil.copytree(workdir / "logs", run_dir / "logs", dirs_exist_ok=True)
            console.print(f"artifacts and logs of this run: {run_dir}")
        if options.keep:
            console.print(f"kept {workdir} (logs in {workdir / 'logs'})")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _remove_containers(console: Console, options: DemoOptions) -> None:
    """The agents' containers and images and the release images: none left behind."""
    ids = device_ids(options.fleet, options.devices)
    versions = ("1.0.0", "1.1.0")  # the versions both paths release
    with console.status("removing the demo's containers and images"):
        removed = containers.cleanup(ids, [f"{MODEL}:{v}" for v in versions])
    console.print(f"removed the demo's {removed} container(s) and its images")


def _hold(console: Console, workdir: Path, fleet: str) -> None:
    """Keep the fleet up until Ctrl-C (or SIGTERM), saying how to reach it."""
    state = workdir / "controller" / "controller.json"
    info = json.loads(state.read_text())
    ca = f"  export EDGECTL_CA_FILE={info['api_ca']}\n" if info.get("api_ca") else ""
    console.print(
        "[bold]the fleet keeps running; Ctrl-C stops it.[/] In another shell:\n"
        f"  export EDGECTL_CONTROLLER={info.get('api', '')}\n"
        f"  export EDGECTL_TOKEN_FILE={workdir / 'controller' / 'admin.token'}\n{ca}"
        f"  edgectl devices list --fleet {fleet}; edgectl events --fleet {fleet}; "
        "edgectl rollout list"
    )
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            time.sleep(3600)
    console.print("stopping the fleet")


def _run(
    options: DemoOptions, console: Console, workdir: Path, procs: Processes
) -> tuple[Score, ...]:
    fleet = start_fleet(options, console, workdir, procs)
    ids = fleet.ids
    token = fleet.controller.admin_token()
    with fleet.controller.client(token) as client:
        with step(console, "training the digits model, v1 (32 hidden) and v2 (64 hidden)"):
            data = digits.load_data()
            v1 = digits.train(data, hidden=32, seed=0)
            v2 = digits.train(data, hidden=64, seed=1)
        console.print(f"  test accuracy: v1 {v1.accuracy:.2%}, v2 {v2.accuracy:.2%}")
        rounds = Round(
            client, console, workdir=workdir, fleet=options.fleet, ids=ids, data=data,
            endpoints=fleet.local_endpoints(), runtime=fleet.release_runtime,
            publish=fleet.publish,
        )  # fmt: skip
        rounds.play(v1, name=MODEL, version="1.0.0", timeout_s=options.rollout_timeout_s)
        scores = rounds.play(v2, name=MODEL, version="1.1.0", timeout_s=options.rollout_timeout_s)
        summary = table(
            "DEVICE", "RELEASE", "PHASE", "ACCURACY", "P50 LATENCY",
            title=f"summary (runtime: {fleet.runtime})",
        )  # fmt: skip
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
