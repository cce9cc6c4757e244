"""``edgectl deploy``: roll a release out to a fleet and, by default, watch it converge.

The controller answers ``Deploy`` with each target device and the generation it must reach;
``watching.watch`` polls ``ListDevices`` until each has converged or failed, or the timeout
passes. Exits non-zero when any device failed or the timeout passed.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from edgefleet.common.types import ReleaseRef
from edgefleet.edgectl import output, shell
from edgefleet.edgectl.convergence import Outcome
from edgefleet.edgectl.rollout_view import RolloutView, result_table
from edgefleet.edgectl.watching import WatchResult, targets_of, watch


def _result_dict(result: WatchResult) -> list[dict[str, Any]]:
    rows = []
    for d in result.progress.devices:
        info = result.devices.get(d.device_id)
        row = output.device_dict(info) if info is not None else {"device_id": d.device_id}
        rows.append({**row, "target_generation": d.target_generation, "outcome": str(d.outcome)})
    return rows


def deploy(
    ctx: typer.Context,
    *,
    release: Annotated[
        str, typer.Argument(help="The release to roll out.", metavar="NAME:VERSION")
    ],
    fleet: Annotated[
        str,
        typer.Option("--fleet", "-f", help="Target fleet.", show_default=False, metavar="FLEET"),
    ],
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Watch until every device converged.")
    ] = True,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout", help="Seconds to wait for convergence.", min=1.0, metavar="SECONDS"
        ),
    ] = 300.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Roll a release out to a fleet and watch it converge.

    Asks the controller to deploy RELEASE (NAME:VERSION) to every device of --fleet, then
    polls the devices until each reports the new generation applied and the release
    active, showing progress. Ends with a table of every target device. Exits 1 when a
    device failed (it keeps or rolls back to its last good release) or --timeout passed;
    --no-wait returns right after the controller accepted the deploy.
    """
    ref = ReleaseRef.parse(release)
    with shell.controller(ctx) as client:
        reply = client.deploy(ref, fleet)
        targets = targets_of(reply)
        summary: dict[str, Any] = {
            "rollout_id": reply.rollout_id,
            "release": str(ref),
            "fleet": fleet,
            "targets": [{"device_id": k, "generation": v} for k, v in targets.items()],
        }
        if not targets:
            output.note(f"[yellow]fleet {fleet} has no devices yet; nothing to wait for[/]")
        if not wait or not targets:
            if as_json:
                output.print_json(summary)
            else:
                output.console.print(
                    f"rollout {reply.rollout_id}: {ref} to {len(targets)} device(s) of {fleet}"
                )
            return
        title = f"{ref} -> {fleet}"
        try:
            with RolloutView(
                output.err_console, title=title, total=len(targets), enabled=not as_json
            ) as view:
                result = watch(
                    client,
                    release=str(ref),
                    fleet=fleet,
                    targets=targets,
                    timeout_s=timeout,
                    on_progress=view.update,
                )
        except KeyboardInterrupt:
            output.note(
                f"stopped watching; rollout {reply.rollout_id} goes on "
                f"(edgectl devices list --fleet {fleet})"
            )
            raise typer.Exit(shell.EXIT_INTERRUPTED) from None
    progress = result.progress
    failed = [d for d in progress.devices if d.outcome is Outcome.FAILED]
    if as_json:
        summary |= {
            "ok": progress.ok,
            "timed_out": result.timed_out,
            "devices": _result_dict(result),
        }
        output.print_json(summary)
    else:
        output.console.print(result_table(result))
    if failed:
        first = failed[0].observed
        why = f" ({failed[0].device_id}: {first.last_error})" if first and first.last_error else ""
        shell.fail(f"{ref}: {len(failed)} of {len(targets)} device(s) failed{why}")
    if result.timed_out:
        shell.fail(
            f"{ref}: timed out after {timeout:g}s with "
            f"{progress.count(Outcome.CONVERGED)} of {len(targets)} device(s) converged"
        )
    if not as_json:
        output.console.print(
            f"[green]{ref} is active on all {len(targets)} device(s) of {fleet}[/]"
        )
