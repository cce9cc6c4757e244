"""``edgectl events``: what devices reported (install steps, health checks, roll-backs)."""

from __future__ import annotations

from typing import Annotated

import typer

from edgefleet.edgectl import output, shell

GATE_FAILED = "rollout_gate_failed"
"""The event the controller writes on a device that failed its rollout's gate."""


def events(
    ctx: typer.Context,
    *,
    device: Annotated[
        str, typer.Option("--device", "-d", help="Only this device.", metavar="DEVICE")
    ] = "",
    fleet: shell.OnlyFleet = "",
    limit: Annotated[
        int, typer.Option("--limit", "-n", help="At most N events.", min=1, metavar="N")
    ] = 50,
    as_json: shell.Json = False,
) -> None:
    """Show recent device events.

    Install steps, health checks, roll-backs and rejected desired states, as devices
    reported them, newest last, and the controller's rollout_gate_failed events: below the
    table, each rollback explained in one line (which device failed which gate, the figure
    against its threshold). --device or --fleet narrows them.
    """
    if device and fleet:
        shell.fail("give --device or --fleet, not both", code=shell.EXIT_USAGE)
    with shell.controller(ctx) as client:
        found = client.list_events(device_id=device, fleet=fleet, limit=limit)
    found.sort(key=lambda e: e.at_ms)
    if as_json:
        output.print_json([output.event_dict(e) for e in found])
        return
    t = output.table("TIME", "DEVICE", "KIND", "RELEASE", "GEN", "PHASE", "MESSAGE")
    for e in found:
        t.add_row(
            output.when(e.at_ms),
            output.safe(e.device_id),
            output.safe(e.kind),
            output.safe(e.release) or "-",
            str(e.generation) if e.generation else "-",
            output.styled_phase(e.phase),
            output.safe(e.message),
        )
    output.print_table(t, empty="no events")
    for e in found:  # the controller's one-line explanation of each rollback, below the table
        if e.kind == GATE_FAILED:
            output.console.print(f"[bold red]rollback:[/] [bold]{output.safe(e.message)}[/]")
