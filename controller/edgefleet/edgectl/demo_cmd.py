"""``edgectl demo``: run a whole fleet on this machine (the logic lives in ``edgefleet.demo``)."""

from __future__ import annotations

from typing import Annotated

import typer

from edgefleet.edgectl import output


def demo(
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
) -> None:
    """Run a whole fleet on this machine, end to end.

    Starts an MQTT broker, edge-controller and --devices edge-agents as local processes
    in a temporary directory; trains the digits model twice; registers, releases and
    deploys v1 (1.0.0) then v2 (1.1.0) to every device, checks each device's accuracy
    through Predict, prints a summary, and stops everything it started (also on error or
    Ctrl-C). Needs no running controller: ignores --controller.
    """
    from edgefleet.common.types import validate_name
    from edgefleet.demo.runner import DemoOptions, run

    if broker not in ("auto", "mosquitto", "amqtt"):
        raise typer.BadParameter("use auto, mosquitto or amqtt", param_hint="--broker")
    validate_name("fleet", fleet)
    options = DemoOptions(
        devices=devices, fleet=fleet, keep=keep, broker=broker, rollout_timeout_s=timeout
    )
    result = run(options, output.console)
    output.console.print(
        f"[green]demo finished in {result.elapsed_s:.1f}s: "
        f"{len(result.scores)} device(s) on {result.scores[0].release}[/]"
    )
