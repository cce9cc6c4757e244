"""``edgectl deploy`` and ``edgectl rollback``: start a rollout and, by default, follow it.

Only the strategy options the operator typed go on the wire; the controller validates them and
fills in the rest, and a bad value comes back as its one ``error:`` line, nothing deployed
(edgectl holds no copy of the strategy's rules). A ``--strategy`` that is no ``StrategyKind``
word has no value to send, so edgectl refuses it itself. The ``Deploy`` reply names only the first
step's devices, so ``--wait`` follows the rollout (``following.follow``) until the controller
says it finished, drawing its steps and devices live.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer

from edgefleet.common.errors import InvalidInputError
from edgefleet.edgectl import output, shell

# grpc, protobuf (which rolloutwords, following and rollout_status read) and the domain types:
# each function imports what it uses when a command runs, so that --help loads none of them
if TYPE_CHECKING:
    from edgefleet.edgectl.client import ControllerClient
    from edgefleet.edgectl.following import FollowResult
    from edgefleet.v1 import controller_pb2 as pb

STRATEGY_PANEL = "Rollout strategy (unset = the controller's default)"

FleetOption = Annotated[
    str, typer.Option("--fleet", "-f", help="Target fleet.", show_default=False, metavar="FLEET")
]
TimeoutOption = Annotated[
    float,
    typer.Option(
        "--timeout",
        help="Seconds to follow the rollout before giving up (the rollout carries on).",
        min=1.0,
        metavar="SECONDS",
    ),
]
JsonOption = shell.Json


def strategy_message(
    *,
    kind: str | None,
    canary: str | None,
    waves: str | None,
    max_parallel: int | None,
    max_failures: str | None,
    bake: str | None,
    device_timeout: str | None,
    max_latency_ratio: float | None,
    max_error_rate: float | None,
) -> pb.RolloutStrategy | None:
    """The strategy as typed, for the controller to validate (its ``INVALID_ARGUMENT`` is the
    one line); a kind that is no word of ``StrategyKind`` is ``InvalidInputError`` here.

    ``None`` when no option was given: the controller's default, all at once.
    """
    from edgefleet.v1 import controller_pb2 as pb

    options: dict[str, Any] = {
        "canary": canary,
        "waves": waves,
        "max_parallel": max_parallel,
        "bake": bake,
        "device_timeout": device_timeout,
        "max_failures": max_failures,
        "max_latency_ratio": max_latency_ratio,
        "max_error_rate": max_error_rate,
    }
    typed = {name: value for name, value in options.items() if value is not None}
    if kind is None and not typed:
        return None
    # RolloutStrategy's fields are the controller's strategy.parse keywords; empty strings and
    # zeros (unset) are "the controller's default" on the wire
    return pb.RolloutStrategy(
        strategy_kind=_kind_value(kind) if kind else pb.STRATEGY_KIND_UNSPECIFIED,
        **{name: value for name, value in typed.items() if value},
    )


def _kind_value(word: str) -> pb.StrategyKind.ValueType:
    """A deploy's kind (``rollback`` is the controller's own, never asked for)."""
    from edgefleet.common import rolloutwords
    from edgefleet.v1 import controller_pb2 as pb

    rollback = rolloutwords.kind_word(pb.STRATEGY_KIND_ROLLBACK)
    deployable = [k for k in rolloutwords.kind_words() if k != rollback]
    if word not in deployable:
        raise InvalidInputError(f"--strategy must be one of {', '.join(deployable)}, got {word!r}")
    return rolloutwords.kind_value(word)


def _follow(
    client: ControllerClient, rollout_id: str, *, timeout_s: float | None, live: bool
) -> FollowResult:
    """Follow the rollout, drawing it on stderr; Ctrl-C leaves it running on the controller."""
    from edgefleet.edgectl import following
    from edgefleet.edgectl.rollout_status import RolloutLive

    try:
        with RolloutLive(output.err_console, enabled=live) as view:
            return following.follow(
                client, rollout_id, timeout_s=timeout_s, on_progress=view.update
            )
    except KeyboardInterrupt:
        output.note(
            f"stopped watching; rollout {rollout_id} continues on the controller. "
            f"Follow it with: edgectl rollout status {rollout_id} --watch "
            f"(or stop it: edgectl rollout abort {rollout_id})"
        )
        raise typer.Exit(shell.EXIT_INTERRUPTED) from None


def _devices_json(result: FollowResult) -> list[dict[str, Any]]:
    from edgefleet.edgectl import following

    seen = result.snapshot.devices
    return [
        {
            **(output.device_dict(seen[d.device_id]) if d.device_id in seen else {}),
            "device_id": d.device_id,
            "rollout_state": following.state(d),
            "rollout_reason": d.reason,
        }
        for d in result.snapshot.info.devices
    ]


def _report(result: FollowResult, summary: dict[str, Any], *, as_json: bool) -> None:
    from edgefleet.edgectl import following
    from edgefleet.edgectl.rollout_status import rollout_dict, status_view

    info = result.snapshot.info
    if as_json:
        summary |= {
            "ok": result.ok,
            "timed_out": result.timed_out,
            "phase": following.phase(info),
            "reason": info.reason,
            "rollout": rollout_dict(info),
            "devices": _devices_json(result),
        }
        output.print_json(summary)
    else:
        output.console.print(status_view(result.snapshot))


def _timed_out(what: str, info: pb.RolloutInfo, timeout: float) -> str:
    from edgefleet.edgectl import following

    return (
        f"{what}: timed out after {timeout:g}s; rollout {info.rollout_id} is still "
        f"{following.phase(info)} on the controller "
        f"(edgectl rollout status {info.rollout_id} --watch)"
    )


def _after_start(
    client: ControllerClient,
    reply: pb.DeployResponse,
    fields: dict[str, Any],
    *,
    what: str,
    accepted: str,
    done: Callable[[pb.RolloutInfo], str],
    wait: bool,
    timeout: float,
    as_json: bool,
    count_failed: bool,
) -> None:
    """What deploy and rollback do once the controller started the rollout. With --no-wait:
    print the summary (``fields`` with the rollout id and first targets) as JSON, or
    ``accepted``. Else follow it live, report it, fail (exit 1) when it timed out or did not
    succeed (``what`` first; with ``count_failed`` the devices that failed), and say ``done``
    of the finished rollout (not with --json)."""
    from edgefleet.edgectl import following

    summary: dict[str, Any] = {
        "rollout_id": reply.rollout_id,
        **fields,
        "targets": [{"device_id": x.device_id, "generation": x.generation} for x in reply.targets],
    }
    if not wait:
        if as_json:
            output.print_json(summary)
        else:
            output.console.print(accepted)
        return
    result = _follow(client, reply.rollout_id, timeout_s=timeout, live=not as_json)
    _report(result, summary, as_json=as_json)
    info = result.snapshot.info
    if result.timed_out:
        shell.fail(_timed_out(what, info, timeout))
    if not result.ok:
        failed = following.failed_count(info) if count_failed else 0
        counted = f"{failed} of {len(info.devices)} device(s) failed; " if failed else ""
        shell.fail(
            f"{what}: {counted}rollout {info.rollout_id} {following.phase(info)}: "
            f"{info.reason or 'no reason'}"
        )
    if not as_json:
        output.console.print(done(info))


def deploy(
    ctx: typer.Context,
    *,
    release: Annotated[
        str, typer.Argument(help="The release to roll out.", metavar="NAME:VERSION")
    ],
    fleet: FleetOption,
    kind: Annotated[
        str | None,
        typer.Option(
            "--strategy",
            help="all-at-once (every device at once) or canary (a first step, then waves).",
            metavar="KIND",
            rich_help_panel=STRATEGY_PANEL,
            show_default=False,
        ),
    ] = None,
    canary: Annotated[
        str | None,
        typer.Option(
            "--canary",
            help="Devices in the first step: a count (2) or a share of the fleet (10%). "
            "Canary only; default 1 device.",
            metavar="AMOUNT",
            rich_help_panel=STRATEGY_PANEL,
        ),
    ] = None,
    waves: Annotated[
        str | None,
        typer.Option(
            "--waves",
            help="Cumulative targets after the canary, increasing: 25%,50%,100% or 3,6. "
            "Canary only; the last step always covers the fleet.",
            metavar="LIST",
            rich_help_panel=STRATEGY_PANEL,
        ),
    ] = None,
    max_parallel: Annotated[
        int | None,
        typer.Option(
            "--max-parallel",
            help="Most devices installing at once; 0 = no limit.",
            metavar="N",
            rich_help_panel=STRATEGY_PANEL,
        ),
    ] = None,
    max_failures: Annotated[
        str | None,
        typer.Option(
            "--max-failures",
            help="Abort and roll back when more devices than this fail: a count (2) or a "
            "share of those sent (5%). Default 0%: the first failure rolls back.",
            metavar="AMOUNT",
            rich_help_panel=STRATEGY_PANEL,
        ),
    ] = None,
    bake: Annotated[
        str | None,
        typer.Option(
            "--bake",
            help="How long each step must stay healthy before the next starts: 30s, 5m, "
            "500ms. Default 0s.",
            metavar="DURATION",
            rich_help_panel=STRATEGY_PANEL,
        ),
    ] = None,
    device_timeout: Annotated[
        str | None,
        typer.Option(
            "--device-timeout",
            help="A device that has not reported the release after this counts as failed. "
            "Default 5m.",
            metavar="DURATION",
            rich_help_panel=STRATEGY_PANEL,
        ),
    ] = None,
    max_latency_ratio: Annotated[
        float | None,
        typer.Option(
            "--max-latency-ratio",
            help="Health gate: a device's p95 latency on the release may be at most this "
            "times its p95 on the release before. Default 1.5.",
            metavar="RATIO",
            rich_help_panel=STRATEGY_PANEL,
        ),
    ] = None,
    max_error_rate: Annotated[
        float | None,
        typer.Option(
            "--max-error-rate",
            help="Health gate: errors per request on the release, 0..1. Default 0.05.",
            metavar="RATE",
            rich_help_panel=STRATEGY_PANEL,
        ),
    ] = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait/--no-wait", help="Follow the rollout until it succeeded or rolled back."
        ),
    ] = True,
    timeout: TimeoutOption = 300.0,
    as_json: JsonOption = False,
) -> None:
    """Roll a release out to a fleet, all at once or in health-gated steps, and follow it.

    Asks the controller to deploy RELEASE (NAME:VERSION) to every device of --fleet. With
    --strategy canary it goes to --canary devices first, then to each of --waves; a step
    starts once every device of the one before runs the release healthy (within the latency
    and error-rate gates) for --bake. When more than --max-failures devices fail, the
    controller aborts and sends every device it touched back to the release it ran before;
    devices it never reached are never touched.

    Strategy values are checked before anything is sent. With --wait (the default) it shows
    the rollout's phase, step and each device live, and exits 0 once the rollout succeeded,
    1 when it rolled back (with the reason) or --timeout passed. Ctrl-C stops watching, not
    the rollout: follow it with edgectl rollout status ID --watch. --no-wait returns right
    after the controller accepted the deploy.

    Examples: deploy digits:1.1.0 -f factory-a; deploy digits:1.1.0 -f factory-a
    --strategy canary --canary 10% --waves 50%,100% --bake 5m --max-failures 5%.
    """
    from edgefleet.common import rolloutwords
    from edgefleet.common.types import ReleaseRef
    from edgefleet.v1 import controller_pb2 as pb

    ref = ReleaseRef.parse(release)
    strategy = strategy_message(
        kind=kind,
        canary=canary,
        waves=waves,
        max_parallel=max_parallel,
        max_failures=max_failures,
        bake=bake,
        device_timeout=device_timeout,
        max_latency_ratio=max_latency_ratio,
        max_error_rate=max_error_rate,
    )
    with shell.controller(ctx) as client:
        reply = client.deploy(ref, fleet, strategy=strategy)
        _after_start(
            client,
            reply,
            {
                "release": str(ref),
                "fleet": fleet,
                "strategy": kind or rolloutwords.kind_word(pb.STRATEGY_KIND_ALL_AT_ONCE),
            },
            what=str(ref),
            accepted=f"rollout {reply.rollout_id}: {ref} to fleet {fleet}, first to "
            f"{len(reply.targets)} device(s); follow it with: "
            f"edgectl rollout status {reply.rollout_id} --watch",
            done=lambda info: (
                f"[green]{ref} is active on all {len(info.devices)} device(s) "
                f"of {fleet}[/] (rollout {info.rollout_id} succeeded)"
            ),
            wait=wait,
            timeout=timeout,
            as_json=as_json,
            count_failed=True,
        )


def rollback(
    ctx: typer.Context,
    *,
    fleet: FleetOption,
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            help="Send every device to this release instead of each one's previous release.",
            metavar="NAME:VERSION",
            show_default=False,
        ),
    ] = None,
    wait: Annotated[
        bool,
        typer.Option("--wait/--no-wait", help="Follow until every device confirmed it is back."),
    ] = True,
    timeout: TimeoutOption = 300.0,
    as_json: JsonOption = False,
) -> None:
    """Send a whole fleet back to its previous release (or to --to NAME:VERSION).

    An unfinished rollout of the fleet is aborted first. Each device goes back to the
    release it ran before its current one; devices with nothing to go back to are skipped.
    With --wait (the default) it follows the rollback live and exits 0 once every device
    confirmed, 1 when one did not or --timeout passed.
    """
    from edgefleet.common.types import ReleaseRef

    to_release = str(ReleaseRef.parse(to)) if to else ""
    with shell.controller(ctx) as client:
        reply = client.rollback(fleet, to_release=to_release)
        _after_start(
            client,
            reply,
            {"fleet": fleet, "to_release": to_release},
            what=f"rollback of {fleet}",
            accepted=f"rollback {reply.rollout_id}: {len(reply.targets)} device(s) of {fleet} "
            f"sent back; follow it with: edgectl rollout status {reply.rollout_id} --watch",
            done=lambda info: (
                f"[green]{len(reply.targets)} device(s) of {fleet} are back on "
                f"{to_release or 'their previous release'}[/] (rollback {info.rollout_id})"
            ),
            wait=wait,
            timeout=timeout,
            as_json=as_json,
            count_failed=False,
        )
