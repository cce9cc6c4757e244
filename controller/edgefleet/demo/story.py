"""The full ``edgectl demo``: what EdgeFleet does that other fleet managers do not, in six steps.

1. train the digits model and register it;
2. compress it with ``--recipe auto`` behind an accuracy gate (``compression``);
3. release the winner and roll it out, then score every device through Predict;
4. roll out a release whose accuracy collapsed with a one-device canary (``canary``): the
   canary fails its gate and the controller rolls back by itself, no other device touched;
5. SIGKILL one agent under a stream of requests through ``FailoverClient`` (``outage``):
   every request answered, the agent restarted and rejoining;
6. a summary, the run's events and metrics written to the run directory, where to look next.

Each step checks its outcome against what the controller and the devices report and raises
``DemoFailed`` when it does not hold; ``summary.json`` in the run directory records every step
(with the failure, if one).
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from edgefleet.common.artifacts import atomic_write
from edgefleet.common.errors import EdgeFleetError
from edgefleet.common.types import ReleaseRef
from edgefleet.demo import canary, compression, digits, outage
from edgefleet.demo.errors import DemoFailed
from edgefleet.demo.evaluation import Score, score
from edgefleet.demo.fleet import DemoOptions, Fleet, agent_spec, start_fleet, step
from edgefleet.demo.processes import Processes
from edgefleet.demo.rounds import Round
from edgefleet.demo.stack import Agent, start_agents
from edgefleet.edgectl import following
from edgefleet.edgectl.client import ControllerClient, file_chunks
from edgefleet.edgectl.compress_plot import write_compress_plot
from edgefleet.edgectl.inference import InferenceClient
from edgefleet.edgectl.output import event_dict, table
from edgefleet.edgectl.rollout_plot import write_rollout_plot
from edgefleet.v1 import controller_pb2 as pb

MODEL = "digits"
GOOD_VERSION = "1.0.0"
BAD_VERSION = "1.1.0"
HIDDEN = 32


@dataclass
class Story:
    """What each step found, in order; written to ``summary.json`` however the run ends."""

    run_dir: Path
    steps: list[dict[str, Any]] = field(default_factory=list)
    artifacts: list[Path] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    failed: str = ""
    current: str = "start"  # the step under way

    def begin(self, name: str) -> None:
        self.current = name

    def record(self, name: str, result: str, **facts: Any) -> None:
        self.steps.append({"step": name, "ok": True, "result": result})
        self.facts[name] = facts

    def fail(self, reason: str) -> None:
        self.failed = f"{self.current}: {reason}"
        self.steps.append({"step": self.current, "ok": False, "result": reason})

    def write(self, *, elapsed_s: float) -> Path:
        path = self.run_dir / "summary.json"
        if path not in self.artifacts:
            self.artifacts.append(path)
        summary = {
            "ok": not self.failed,
            "failed": self.failed or None,
            "elapsed_s": round(elapsed_s, 1),
            "steps": self.steps,
            "facts": self.facts,
            "artifacts": [str(p) for p in self.artifacts],
        }
        atomic_write(path, json.dumps(summary, indent=2, default=str).encode() + b"\n")
        return path


def play(
    options: DemoOptions,
    console: Console,
    *,
    workdir: Path,
    run_dir: Path,
    procs: Processes,
    started: float,
) -> Story:
    story = Story(run_dir)
    try:
        fleet = start_fleet(options, console, workdir, procs)
        story.facts["runtime"] = fleet.runtime
        token = fleet.controller.admin_token()
        with fleet.controller.client(token) as client:
            _Steps(options, console, story, fleet, client, workdir, procs).all()
            _finish(console, story, fleet, client, options=options)
    except EdgeFleetError as exc:  # DemoFailed: a check; or a process, an RPC that failed
        story.fail(str(exc))
        console.print(f"[bold red]✗ {story.current}: {exc}[/]")
        raise
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM
        story.fail("interrupted")
        raise
    finally:
        story.write(elapsed_s=time.monotonic() - started)
    return story


@dataclass
class _Steps:
    """Steps 1-5, in order; each narrates, checks and records what it found in ``story``."""

    options: DemoOptions
    console: Console
    story: Story
    fleet: Fleet
    client: ControllerClient
    workdir: Path
    procs: Processes

    def all(self) -> None:
        data = digits.load_data()
        model = self.train(data)
        compressed = self.compress(data, model)
        good = self.deploy(data, compressed)
        untouched = self.canary(data, good)
        victim = untouched[-1] if untouched else self.fleet.ids[-1]
        self.failover(victim, compressed, good)

    def train(self, data: digits.DigitsData) -> pb.RegisteredModel:
        self.story.begin("train")
        self.console.rule("1/6 train")
        with step(
            self.console, f"training the digits model ({HIDDEN} hidden units), registering it"
        ):
            trained = digits.train(data, hidden=HIDDEN, seed=0)
            path = self.workdir / "models" / f"{MODEL}.onnx"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(trained.onnx_bytes)
            model = self.client.upload_model(
                file_chunks(path), name=MODEL, size=len(trained.onnx_bytes),
                description=f"digits MLP, {HIDDEN} hidden units",
            )  # fmt: skip
        self.console.print(
            f"  test accuracy {trained.accuracy:.2%}; registered {MODEL} v{model.version} "
            f"({model.size:,} bytes)"
        )
        self.story.record(
            "train",
            f"{MODEL} v{model.version}: test accuracy {trained.accuracy:.2%}",
            accuracy=trained.accuracy,
            model_version=model.version,
            size_bytes=model.size,
        )
        return model

    def compress(
        self, data: digits.DigitsData, model: pb.RegisteredModel
    ) -> compression.Compressed:
        self.story.begin("compress")
        budget = self.options.compress_budget_s
        self.console.rule("2/6 compress: edgectl model compress --recipe auto")
        self.console.print(
            f"  every candidate is judged on {compression.EVAL_SAMPLES} held-out digits: it may "
            f"lose at most {compression.MAX_DROP:g} point of accuracy; the smallest that passes "
            f"wins (time budget {budget:g} s)"
        )
        with step(self.console, f"compressing {MODEL} v{model.version}"):
            compressed = compression.compress(
                self.client, self.console, name=MODEL, data=data, time_budget_s=budget
            )
        self.console.print(f"  winner {compression.why(compressed)}")
        self.story.artifacts += _compress_plot(self.console, compressed, self.story.run_dir)
        w, original = compressed.winner, compressed.result.original
        self.story.record(
            "compress",
            compression.why(compressed),
            winner=compressed.result.winner,
            model_version=compressed.model.version,
            size_bytes=w.size_bytes,
            transfer_bytes=w.transfer_bytes,
            original_size_bytes=original.size_bytes,
            original_transfer_bytes=original.transfer_bytes,
            metric=w.metric,
            value=w.value,
            drop=w.drop,
            candidates=len(compressed.result.candidates),
        )
        return compressed

    def deploy(self, data: digits.DigitsData, compressed: compression.Compressed) -> ReleaseRef:
        self.story.begin("deploy")
        good = ReleaseRef(MODEL, GOOD_VERSION)
        self.console.rule(f"3/6 release and deploy {good}")
        version = compressed.model.version
        release = self.client.create_release(
            MODEL, GOOD_VERSION, model_version=version, runtime=self.fleet.release_runtime
        )
        self.console.print(
            f"  release {good}: model v{version} ({compressed.result.winner}), "
            f"signed by {release.key_id}"
        )
        if self.fleet.registry:
            with step(self.console, f"pushing {good}'s image to {self.fleet.registry}"):
                self.fleet.publish(str(good))
            self.console.print(f"  image {release.manifest.image[:19]}, pinned in the manifest")
        rounds = Round(
            self.client, self.console, workdir=self.workdir, fleet=self.options.fleet,
            ids=self.fleet.ids, data=data, endpoints=self.fleet.local_endpoints(),
        )  # fmt: skip
        rounds.roll_out(good, timeout_s=self.options.rollout_timeout_s)
        scores = _score_all(self.client, self.console, self.fleet, compressed, release=str(good))
        self.story.record(
            "deploy",
            f"{good} active on {len(scores)}/{len(self.fleet.ids)} devices, each scoring "
            f"{scores[0].accuracy:.2%} through Predict as the gate measured",
            release=str(good),
            devices={s.device_id: {"accuracy": s.accuracy, "p50_ms": s.p50_ms} for s in scores},
        )
        return good

    def canary(self, data: digits.DigitsData, good: ReleaseRef) -> tuple[str, ...]:
        """Step 4; the devices the bad release never reached."""
        self.story.begin("canary")
        bad_ref = ReleaseRef(MODEL, BAD_VERSION)
        self.console.rule(f"4/6 a bad release, {bad_ref}, with a one-device canary")
        bad = canary.deploy_bad(
            self.client, self.console, name=MODEL, version=BAD_VERSION,
            fleet=self.options.fleet, good=str(good), data=data, workdir=self.workdir,
            timeout_s=self.options.rollout_timeout_s, runtime=self.fleet.release_runtime,
            publish=self.fleet.publish,
        )  # fmt: skip
        stopped_at = ", ".join(bad.canary)
        self.console.print(
            f"[green]✓[/] the canary {stopped_at} failed its gate and the controller "
            f"rolled {bad_ref} back by itself (rollout {following.phase(bad.info)})"
        )
        self.console.print(
            f"  never sent {bad_ref}: {', '.join(bad.untouched)} (desired generation unchanged, "
            f"no event of it, no move in the rollout's history); {stopped_at} runs {good} again"
        )
        self.story.artifacts += _rollout_plot(self.console, bad.info, self.story.run_dir)
        self.story.record(
            "canary",
            f"{bad_ref} ({bad.accuracy:.0%} accurate) stopped at {stopped_at} and rolled "
            f"back ({following.phase(bad.info)}); never sent to {', '.join(bad.untouched)}",
            rollout_id=bad.info.rollout_id,
            phase=following.phase(bad.info),
            reason=bad.reason,
            canary=list(bad.canary),
            untouched=list(bad.untouched),
            bad_accuracy=bad.accuracy,
        )
        return bad.untouched

    def failover(
        self, victim_id: str, compressed: compression.Compressed, good: ReleaseRef
    ) -> None:
        self.story.begin("failover")
        release = str(good)
        self.console.rule(f"5/6 SIGKILL {victim_id}'s agent while a local app streams requests")
        outage.loopback_without_proxy()
        victim = self.fleet.agents[victim_id]
        counts, killed_at = outage.kill_and_failover(
            victim, compressed.eval_x, self.console, release=release
        )
        self.console.print(
            f"  {counts.answered} requests: {counts.local} answered locally, {counts.neighbour} "
            f"by a neighbour, {counts.failed} failed"
        )
        outage.check_stream(counts, release=release, what=f"the stream across {victim_id}'s kill")
        if counts.local == 0 or counts.neighbour == 0:
            raise DemoFailed(
                f"the stream should have been answered before the kill by {victim_id} and "
                f"after it by a neighbour: {counts.local} local, {counts.neighbour} by a neighbour"
            )
        with step(self.console, f"restarting {victim_id}'s agent on its data directory"):
            restarted = _restart(self.procs, self.fleet, victim, workdir=self.workdir)
            self.fleet.agents[victim_id] = restarted
            outage.wait_rejoined(
                self.client, restarted, release=release, timeout_s=outage.REJOIN_TIMEOUT_S
            )
            after = outage.after_restart(restarted, compressed.eval_x, release=release)
        downtime = time.monotonic() - killed_at
        self.console.print(
            f"  {victim_id} rejoined: online on {restarted.predict_endpoint}, serving {good}, "
            f"{after.local}/{after.answered} requests answered locally, {downtime:.1f}s after "
            "the kill"
        )
        self.story.record(
            "failover",
            f"{victim_id} SIGKILLed: {counts.local} answered locally, {counts.neighbour} by a "
            f"neighbour, {counts.failed} failed; rejoined serving {good}",
            device=victim_id,
            local=counts.local,
            neighbour=counts.neighbour,
            failed=counts.failed,
            after_restart_local=after.local,
            rejoined_after_s=round(downtime, 1),
        )


def _restart(procs: Processes, fleet: Fleet, victim: Agent, *, workdir: Path) -> Agent:
    (agent,) = start_agents(
        procs,
        [agent_spec(victim.fleet, victim.device_id)],
        workdir=workdir,
        mqtt_url=fleet.broker.url,
        controller=fleet.controller.address,
        trusted_key=fleet.trusted_key,
        telemetry_interval_s=2.0,
        insecure=fleet.insecure,
    )
    return agent


def _score_all(
    client: ControllerClient,
    console: Console,
    fleet: Fleet,
    compressed: compression.Compressed,
    *,
    release: str,
) -> list[Score]:
    """Each device through Predict on the eval digits: the winner's accuracy, exactly."""
    x, y = compressed.eval_x, compressed.eval_y
    expected = compressed.winner.value
    scores = []
    devices = {d.device_id: d for d in client.list_devices()}
    with console.status(f"sending the {len(y)} eval digits to each device"):
        for device_id in fleet.ids:
            endpoint = fleet.agents[device_id].predict_endpoint or (
                devices[device_id].predict_endpoint if device_id in devices else ""
            )
            with InferenceClient(endpoint, name=f"device {device_id}") as agent:
                s = score(agent, x, y, device_id=device_id)
            if s.release != release:
                raise DemoFailed(f"{device_id} answered with {s.release or '-'}, not {release}")
            if not s.matches(expected):
                raise DemoFailed(
                    f"{device_id} scored {s.accuracy:.2%} with {release}; the compression gate "
                    f"measured {expected:.2%} for its winner on the same digits"
                )
            scores.append(s)
    t = table("DEVICE", "RELEASE", "ACCURACY", "GATE MEASURED", "P50", "P99", title="Predict")
    for s in scores:
        t.add_row(
            s.device_id, s.release, f"{s.accuracy:.2%}", f"{expected:.2%}",
            f"{s.p50_ms:.2f} ms", f"{s.p99_ms:.2f} ms",
        )  # fmt: skip
    console.print(t)
    return scores


def _compress_plot(
    console: Console, compressed: compression.Compressed, run_dir: Path
) -> list[Path]:
    """The chart ``edgectl model compress --plot`` draws, as ``compress.png`` and ``.svg``."""
    with console.status("drawing the compression chart"):
        paths = write_compress_plot(
            compressed.result, run_dir / "compress.png", max_drop=compressed.max_drop
        )
    console.print(f"  chart of every candidate: {', '.join(str(p) for p in paths)}")
    return paths


def _rollout_plot(console: Console, info: pb.RolloutInfo, run_dir: Path) -> list[Path]:
    """The timeline ``edgectl rollout status ID --plot`` draws: ``rollout-canary.png``, ``.svg``."""
    with console.status("drawing the rollout's timeline"):
        paths = write_rollout_plot(info, run_dir / "rollout-canary.png")
    console.print(f"  timeline of the rollout: {', '.join(str(p) for p in paths)}")
    return paths


def _finish(
    console: Console,
    story: Story,
    fleet: Fleet,
    client: ControllerClient,
    *,
    options: DemoOptions,
) -> None:
    story.begin("summary")
    console.rule("6/6 summary")
    events = client.list_events(fleet=options.fleet, limit=1000)
    events.sort(key=lambda e: e.at_ms)
    events_file = story.run_dir / "events.json"
    atomic_write(
        events_file, json.dumps([event_dict(e) for e in events], indent=2).encode() + b"\n"
    )
    story.artifacts.append(events_file)
    urls = metrics_urls(fleet)
    story.artifacts += snapshot_metrics(urls, story.run_dir / "metrics")
    t = table("STEP", "CHECKED", "RESULT", title=f"what the demo showed (runtime: {fleet.runtime})")
    for s in story.steps:
        t.add_row(s["step"], "[green]✓[/]" if s["ok"] else "[red]✗[/]", s["result"])
    console.print(t)
    console.print("[bold]where to look next[/]")
    console.print("  Prometheus /metrics (up while the fleet runs; a copy of each is in metrics/):")
    for name, url in urls.items():
        console.print(f"    {name:<12} {url}")
    grafana = dashboards()
    console.print(
        "  Grafana dashboards: "
        + (
            ", ".join(str(p) for p in grafana)
            if grafana
            else "deploy/grafana/dashboards/ in the source tree"
        )
    )
    console.print(
        f"  the run's {len(events)} device events: {events_file} "
        f"(live: edgectl events --fleet {options.fleet})"
    )
    story.facts["metrics_urls"] = urls
    story.facts["events"] = len(events)


def metrics_urls(fleet: Fleet) -> dict[str, str]:
    urls = {}
    if fleet.controller.metrics_port:
        urls["controller"] = f"http://127.0.0.1:{fleet.controller.metrics_port}/metrics"
    for device_id, agent in fleet.agents.items():
        if agent.metrics_port > 0:
            urls[device_id] = f"http://127.0.0.1:{agent.metrics_port}/metrics"
    return urls


def snapshot_metrics(urls: dict[str, str], out: Path) -> list[Path]:
    """What each /metrics says now, as ``NAME.prom``; a process that does not answer is left
    out (its metrics are a view, not a check)."""
    out.mkdir(parents=True, exist_ok=True)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy
    written = []
    for name, url in urls.items():
        with contextlib.suppress(OSError):
            with opener.open(url, timeout=5) as reply:
                body = reply.read()
            path = out / f"{name}.prom"
            atomic_write(path, body)
            written.append(path)
    return written


def dashboards() -> list[Path]:
    """The Grafana dashboards of the source tree this package runs from, if it does."""
    root = Path(__file__).resolve().parents[3]
    return sorted((root / "deploy" / "grafana" / "dashboards").glob("*.json"))
