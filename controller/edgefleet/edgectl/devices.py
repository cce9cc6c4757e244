"""``edgectl devices``: the devices the controller knows, as they last reported."""

from __future__ import annotations

from typing import Annotated

import typer

from edgefleet.edgectl import output, shell

app = typer.Typer(
    help="List devices and what they run.\n\nDevices register themselves when their agent "
    "first reports over MQTT.",
    no_args_is_help=True,
)


@app.command("list")
def list_devices(
    ctx: typer.Context,
    *,
    fleet: Annotated[
        str, typer.Option("--fleet", "-f", help="Only this fleet.", metavar="FLEET")
    ] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """List devices and their state.

    Online, install phase, active release, generation applied/desired, p50 latency from
    telemetry, Predict endpoint and last error of each device.
    """
    with shell.controller(ctx) as client:
        devices = client.list_devices(fleet)
    if as_json:
        output.print_json([output.device_dict(d) for d in devices])
        return
    t = output.table(
        "DEVICE", "FLEET", "ONLINE", "PHASE", "RELEASE", "GEN", "P50", "ENDPOINT", "LAST ERROR"
    )
    for d in devices:
        served = d.HasField("telemetry") and d.telemetry.requests > 0
        p50 = f"{d.telemetry.p50_ms:.2f} ms" if served else "-"
        t.add_row(
            output.safe(d.device_id),
            output.safe(d.fleet),
            "[green]yes[/]" if d.online else "[red]no[/]",
            output.styled_phase(d.phase),
            output.safe(d.active_release) or "-",
            f"{d.generation_applied}/{d.generation_desired}",
            p50,
            output.safe(d.predict_endpoint) or "-",
            output.safe(d.last_error),
        )
    output.print_table(t, empty="no devices")
