"""``edgectl demo``: run a whole fleet on this machine (the logic lives in ``edgefleet.demo``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgefleet.edgectl import output


def demo(
    *,
    devices: Annotated[
        int,
        typer.Option(
            "--devices", "-n", help="How many agents to start.", min=1, max=20, metavar="N"
        ),
    ] = 3,
    fleet: Annotated[
        str, typer.Option("--fleet", help="Fleet of the agents.", metavar="FLEET")
    ] = "factory-a",
    keep: Annotated[
        bool, typer.Option("--keep", help="Keep the temporary directory (logs, data, models).")
    ] = False,
    broker: Annotated[
        str,
        typer.Option(
            "--broker",
            help="MQTT broker: auto (mosquitto when installed, else embedded amqtt), "
            "mosquitto or amqtt.",
            metavar="KIND",
        ),
    ] = "auto",
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout", help="Seconds each rollout may take.", min=1.0, metavar="SECONDS"
        ),
    ] = 60.0,
    quick: Annotated[
        bool,
        typer.Option(
            "--quick",
            help="Only the short path: train twice, release and deploy 1.0.0 then 1.1.0, "
            "score every device (no compression, canary or failover; no run directory).",
        ),
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Run directory for the artifacts (summary.json, events.json, metrics/, "
            "charts, logs/); kept after the run. Default: a new edgefleet-demo-run-TIMESTAMP "
            "in the system's temporary directory.",
            metavar="DIR",
            show_default=False,
        ),
    ] = None,
    compress_budget: Annotated[
        float,
        typer.Option(
            "--compress-budget",
            help="Seconds the compression search may take (its --time-budget).",
            min=1.0,
            metavar="SECONDS",
        ),
    ] = 10.0,
    hold: Annotated[
        bool,
        typer.Option(
            "--hold",
            help="After the summary, keep the fleet running (its /metrics, edgectl against "
            "it) until Ctrl-C.",
        ),
    ] = False,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            help="Plaintext everywhere (any broker, amqtt too). Default: every hop mTLS on "
            "certificates made for the run (Mosquitto from broker-config, the controller "
            "with --tls, each agent enrolled).",
        ),
    ] = False,
    runtime: Annotated[
        str,
        typer.Option(
            "--runtime",
            help="Where the releases run: container (a registry of the run's own, each release "
            "built as an image and pushed there, agents running it in Docker), process (in "
            "the agent's ONNX Runtime) or auto: container when Docker answers, the runtime "
            "image edgefleet/runtime:latest is built and docker-registry is installed, else "
            "process. The demo says which it used, and why.",
            metavar="KIND",
        ),
    ] = "auto",
) -> None:
    """Run a whole fleet on this machine and show what EdgeFleet does, each step checked.

    Starts an MQTT broker, edge-controller and --devices edge-agents (at least 2) as local
    processes in a temporary directory, then: trains the digits model; compresses it with
    `model compress --recipe auto` behind an accuracy gate and prints the report; releases
    the winner (1.0.0), deploys it and scores every device through Predict; deploys a bad
    release (1.1.0, trained on shuffled labels, with golden data it fails) with a
    one-device canary and checks the canary failed its gate, the controller rolled it back
    by itself and no other device was sent it; SIGKILLs one agent while a local app streams
    requests through FailoverClient and checks none failed, then restarts it and checks it
    rejoins; ends with a summary and where to look next. A check that does not hold ends
    the demo with the reason and exit code 1. The run directory (--out) keeps
    summary.json, events.json, the charts of the compression and of the canary's rollout,
    a copy of every /metrics and the logs.

    Every hop is mTLS (--insecure: plaintext): the run's own fleet CA, an mTLS Mosquitto,
    each agent enrolled with a token file before it starts.

    --runtime: container releases where Docker can run them (auto), or as asked; the
    containers and images the run made are removed when it ends.

    --quick keeps the short path: two releases deployed and scored. Everything started is
    stopped however the demo ends (also on error or Ctrl-C). Needs no running controller:
    ignores --controller.
    """
    from edgefleet.common.types import validate_name
    from edgefleet.demo.runner import DemoOptions, run

    if broker not in ("auto", "mosquitto", "amqtt"):
        raise typer.BadParameter("use auto, mosquitto or amqtt", param_hint="--broker")
    if runtime not in ("auto", "container", "process"):
        raise typer.BadParameter("use auto, container or process", param_hint="--runtime")
    validate_name("fleet", fleet)
    if not quick and devices < 2:
        raise typer.BadParameter(
            "the full demo needs 2 devices or more (a canary and a neighbour); or --quick",
            param_hint="--devices",
        )
    options = DemoOptions(
        devices=devices, fleet=fleet, keep=keep, broker=broker, rollout_timeout_s=timeout,
        quick=quick, out=out, compress_budget_s=compress_budget, hold=hold, insecure=insecure,
        runtime=runtime,
    )  # fmt: skip
    result = run(options, output.console)
    if quick:
        output.console.print(
            f"[green]demo finished in {result.elapsed_s:.1f}s: "
            f"{len(result.scores)} device(s) on {result.scores[0].release} "
            f"(runtime: {result.runtime})[/]"
        )
        return
    output.console.print(
        f"[green]demo finished in {result.elapsed_s:.1f}s: "
        f"{len(result.steps)} steps, each checked ({', '.join(result.steps)}; "
        f"runtime: {result.runtime})[/]"
    )
