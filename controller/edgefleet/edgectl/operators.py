"""``edgectl operator``: who may use the controller's API, with which role and fleets (admins).

Roles, each allowed what the one before may do: viewer (list and show), releaser (+ upload,
compress, release), deployer (+ deploy, rollback, pause/resume/abort), admin (+ signing keys,
operators). ``--fleet`` limits an operator to those fleets. ``add`` prints the new token once;
the controller keeps only its hash.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from edgefleet.edgectl import output, shell

if TYPE_CHECKING:  # protobuf: loaded when a command calls, not for --help
    from edgefleet.v1 import controller_pb2 as pb

app = typer.Typer(
    help="Manage operators of the controller's API (admin role).\n\nRoles: viewer < releaser "
    "< deployer < admin; --fleet limits an operator to those fleets. Each operator holds a "
    "bearer token, given to edgectl by EDGECTL_TOKEN, EDGECTL_TOKEN_FILE or token_file in "
    "~/.config/edgefleet/edgectl.toml.",
    no_args_is_help=True,
)

Json = shell.Json
TokenFile = shell.TokenFile


def operator_dict(o: pb.OperatorInfo) -> dict[str, Any]:
    return {
        "name": o.name,
        "role": o.role,
        "fleets": list(o.fleets),
        "created_at_ms": o.created_at_ms,
        "revoked_at_ms": o.revoked_at_ms or None,
    }


@app.command("add")
def add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Operator name (a-z 0-9 . _ -).")],
    *,
    role: Annotated[str, typer.Option("--role", "-r", help="viewer, releaser, deployer or admin.")],
    fleet: Annotated[
        list[str] | None,
        typer.Option("--fleet", "-f", help="Limit to this fleet (repeatable).", metavar="FLEET"),
    ] = None,
    token_file: TokenFile = None,
    as_json: Json = False,
) -> None:
    """Add an operator and print its token, once."""
    with shell.controller(ctx) as client:
        made = client.add_operator(name, role=role, fleets=fleet or ())
    info = made.operator
    shown = shell.keep_token(made.token, token_file)
    if as_json:
        output.print_json({**operator_dict(info), **shown})
        return
    scope = ", ".join(info.fleets) or "every fleet"
    output.note(f"operator {output.safe(info.name)}: {info.role}, {output.safe(scope)}")
    if token_file is not None:
        output.note(f"token written to {output.safe(str(token_file))}")
    else:
        output.note("its token (shown once; the controller keeps only a hash):")
        print(made.token)


@app.command("list")
def list_operators(ctx: typer.Context, as_json: Json = False) -> None:
    """List operators, their roles, fleets and whether they are revoked."""
    with shell.controller(ctx) as client:
        found = client.list_operators()
    if as_json:
        output.print_json([operator_dict(o) for o in found])
        return
    t = output.table("NAME", "ROLE", "FLEETS", "CREATED", "STATE")
    for o in found:
        state = f"[red]revoked {output.when(o.revoked_at_ms)}[/]" if o.revoked_at_ms else "active"
        t.add_row(
            output.safe(o.name),
            o.role,
            output.safe(", ".join(o.fleets)) or "all",
            output.when(o.created_at_ms),
            state,
        )
    output.print_table(t, empty="no operators")


@app.command("revoke")
def revoke(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The operator whose token stops working.")],
) -> None:
    """Revoke an operator: its token is refused from its next call on."""
    with shell.controller(ctx) as client:
        info = client.revoke_operator(name)
    output.console.print(f"operator {output.safe(info.name)} revoked")


@app.command("whoami")
def whoami(ctx: typer.Context, as_json: Json = False) -> None:
    """Show the operator this edgectl's token belongs to."""
    with shell.controller(ctx) as client:
        me = client.whoami()
    if as_json:
        output.print_json(operator_dict(me))
        return
    scope = ", ".join(me.fleets) or "every fleet"
    output.console.print(f"{output.safe(me.name)}: {me.role}, {output.safe(scope)}")
