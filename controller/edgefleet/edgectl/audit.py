"""``edgectl audit``: the controller's audit log, newest first.

Every call that changed something (upload, release, deploy, rollback, keys, operators) and
every refused call, with who made it, from where, and how it ended. Any role may read it; a
fleet-scoped operator sees its own fleets' entries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from edgefleet.edgectl import output, shell

if TYPE_CHECKING:  # protobuf: loaded when a command calls, not for --help
    from edgefleet.v1 import controller_pb2 as pb

OUTCOME_STYLE = {"ok": "green", "denied": "red", "error": "yellow"}


def entry_dict(e: pb.AuditEntry) -> dict[str, Any]:
    return {
        "at_ms": e.at_ms,
        "operator": e.operator,
        "role": e.role,
        "method": e.method,
        "target": e.target,
        "fleet": e.fleet,
        "outcome": e.outcome,
        "detail": e.detail,
        "peer": e.peer,
    }


def audit(
    ctx: typer.Context,
    *,
    limit: Annotated[
        int, typer.Option("--limit", "-n", help="At most N entries.", min=1, metavar="N")
    ] = 50,
    as_json: shell.Json = False,
) -> None:
    """Show the audit log: who changed what, and every refused call.

    Newest first: time, operator and role, the call, what it was about, ok / denied / error
    (with why), and the caller's address.
    """
    with shell.controller(ctx) as client:
        found = client.list_audit(limit=limit)
    if as_json:
        output.print_json([entry_dict(e) for e in found])
        return
    t = output.table("TIME", "OPERATOR", "CALL", "TARGET", "OUTCOME", "DETAIL", "PEER")
    for e in found:
        style = OUTCOME_STYLE.get(e.outcome, "white")
        who = f"{output.safe(e.operator)} [dim]({output.safe(e.role)})[/]" if e.operator else ""
        t.add_row(
            output.when(e.at_ms),
            who or "[dim]anonymous[/]",
            output.safe(e.method),
            output.safe(e.target) or "-",
            f"[{style}]{output.safe(e.outcome)}[/]",
            output.safe(e.detail),
            output.safe(e.peer),
        )
    output.print_table(t, empty="no audit entries")
