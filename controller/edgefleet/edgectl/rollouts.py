"""``edgectl rollout``: list rollouts, show or follow one, pause, resume or abort it.

The controller drives every rollout; these commands only look at it or ask it to change
course. ``status --watch`` follows a rollout the same way ``deploy --wait`` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from edgefleet.edgectl import output, plotfile, shell
from edgefleet.edgectl.deploying import JsonOption

# following, rollout_status and rollout_plot read the generated protobuf module: each command
# imports what it uses when it runs, so that --help loads none of them
if TYPE_CHECKING:
    from edgefleet.edgectl.following import Snapshot
    from edgefleet.v1 import controller_pb2 as pb

app = typer.Typer(
    help="Follow and steer staged rollouts.\n\nA rollout starts with edgectl deploy (or "
    "edgectl rollback); the controller moves it from canary through its waves to succeeded, "
    "or aborts it and sends the devices it touched back (rolled_back). Phases: pending, "
    "canary, wave, paused, succeeded, rolling_back, rolled_back. Device states: waiting, "
    "sent, healthy, failed, rolling_back, reverted.",
    no_args_is_help=True,
)

RolloutId = Annotated[str, typer.Argument(help="The rollout's id (ro-...).", metavar="ID")]


@app.command("list")
def list_rollouts(
    ctx: typer.Context,
    *,
    fleet: shell.OnlyFleet = "",
    limit: Annotated[
        int,
        typer.Option(
            "--limit", "-n", help="At most this many; 0 = the controller's default (20).", min=0
        ),
    ] = 0,
    as_json: JsonOption = False,
) -> None:
    """List rollouts, newest first.

    Id, fleet, release, kind (all-at-once, canary or rollback), phase, step k/N, DEVICES as
    healthy/failed/total, and age of each.
    """
    from edgefleet.edgectl.rollout_status import list_table, rollout_dict

    with shell.controller(ctx) as client:
        rollouts = client.list_rollouts(fleet, limit=limit)
    if as_json:
        output.print_json([rollout_dict(r) for r in rollouts])
        return
    output.print_table(list_table(rollouts), empty="no rollouts")


def _check_plot(path: Path | None) -> Path | None:
    """Refuse a --plot suffix before asking the controller."""
    from edgefleet.edgectl.rollout_plot import plot_paths

    return plotfile.check_plot(path, plot_paths)


@app.command("status")
def status(
    ctx: typer.Context,
    *,
    rollout_id: RolloutId,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch", "-w", help="Redraw live until the rollout finished; exit 1 if it failed."
        ),
    ] = False,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot",
            help="Write a timeline of the rollout here (.png or .svg; the other format is "
            "written beside it): devices per state over time, gate decisions marked, the "
            "rollout's phases as bands. With --watch, once the rollout finished.",
            metavar="FILE.png",
            callback=_check_plot,
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Show one rollout: its phase, steps, and each device's rollout state.

    A rollout that rolled back says why in one line first: which device failed which gate,
    the figure against its threshold. Then its newest gate decisions and, for each device:
    the step it belongs to, its STATE in the rollout (waiting, sent, healthy, failed,
    rolling_back, reverted), its INSTALL phase, active release and generation
    applied/desired as it last reported, and why it failed. --watch redraws until the
    rollout succeeded or rolled back and then exits 0 or 1 (Ctrl-C stops watching, not the
    rollout). --plot draws the rollout's history as a timeline.
    """
    from edgefleet.edgectl import following
    from edgefleet.edgectl.rollout_status import RolloutLive

    with shell.controller(ctx) as client:
        if watch:
            try:
                with RolloutLive(output.err_console, enabled=not as_json) as view:
                    result = following.follow(
                        client, rollout_id, timeout_s=None, on_progress=view.update
                    )
            except KeyboardInterrupt:
                output.note(f"stopped watching; rollout {rollout_id} continues on the controller")
                raise typer.Exit(shell.EXIT_INTERRUPTED) from None
            snap = result.snapshot
        else:
            snap = following.snapshot(client, rollout_id)
        if watch and plot is not None:  # the history as it ended, not the last poll's
            snap = following.snapshot(client, rollout_id)
    _print(snap, as_json=as_json)
    if plot is not None:
        _write_plot(snap.info, plot, as_json=as_json)
    if watch and not following.ok(snap.info):
        shell.fail(
            f"rollout {rollout_id} {following.phase(snap.info)}: "
            f"{snap.info.reason or 'no reason given'}"
        )


def _write_plot(info: pb.RolloutInfo, path: Path, *, as_json: bool) -> None:
    from edgefleet.edgectl.rollout_plot import write_rollout_plot

    try:
        written = write_rollout_plot(info, path)
    except OSError as exc:
        shell.fail(f"could not write the timeline: {exc}")
    text = "timeline: " + ", ".join(str(p) for p in written)
    if as_json:
        output.note(text)  # stdout is the JSON
    else:
        output.console.print(text, markup=False, highlight=False, soft_wrap=True)


def _print(snap: Snapshot, *, as_json: bool) -> None:
    from edgefleet.edgectl.rollout_status import rollout_dict, status_view

    if as_json:
        devices = {k: output.device_dict(v) for k, v in snap.devices.items()}
        output.print_json(rollout_dict(snap.info) | {"device_reports": devices})
    else:
        output.console.print(status_view(snap))


def _changed(info: pb.RolloutInfo, *, as_json: bool, hint: str = "") -> None:
    from edgefleet.edgectl.rollout_status import rollout_dict, step_text, styled_phase

    if as_json:
        output.print_json(rollout_dict(info))
        return
    output.console.print(
        f"rollout {info.rollout_id}: {styled_phase(info)} (step {step_text(info)})"
        + (f"; {hint}" if hint else "")
    )


@app.command("pause")
def pause(ctx: typer.Context, *, rollout_id: RolloutId, as_json: JsonOption = False) -> None:
    """Pause a running rollout: no further device is sent the release.

    Devices already sent it carry on installing. Pausing a paused rollout does nothing; a
    finished one cannot be paused.
    """
    with shell.controller(ctx) as client:
        info = client.pause_rollout(rollout_id)
    _changed(info, as_json=as_json, hint=f"resume it with: edgectl rollout resume {rollout_id}")


@app.command("resume")
def resume(ctx: typer.Context, *, rollout_id: RolloutId, as_json: JsonOption = False) -> None:
    """Resume a paused rollout where it stopped."""
    with shell.controller(ctx) as client:
        info = client.resume_rollout(rollout_id)
    _changed(info, as_json=as_json)


@app.command("abort")
def abort(ctx: typer.Context, *, rollout_id: RolloutId, as_json: JsonOption = False) -> None:
    """Abort a rollout: stop it and send every device it touched back to its previous release.

    Devices it never reached are not touched. The rollout ends rolled_back once each device
    confirmed; follow it with edgectl rollout status ID --watch. Aborting a rollout that is
    already rolling back stops waiting for devices that did not confirm.
    """
    from edgefleet.edgectl import following

    with shell.controller(ctx) as client:
        info = client.abort_rollout(rollout_id)
    hint = "" if following.finished(info) else f"follow it: edgectl rollout status {rollout_id} -w"
    _changed(info, as_json=as_json, hint=hint)
