"""``edgectl keys``: the controller's release-signing keys (Ed25519) and the agents' trust.

Agents start from the public keys that ``keys init --out FILE`` writes (``edge-agent
--trusted-key``: every key still trusted, old and new) and then follow the signed trust bundle
the controller keeps retained on ``ef/v1/trust``: a rotation adds the new key there (the old one
stays trusted through its overlap window), ``keys revoke`` takes a key out.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from edgefleet.edgectl import output, shell

if TYPE_CHECKING:  # protobuf: loaded when a command calls, not for --help
    from edgefleet.v1 import controller_pb2 as pb

app = typer.Typer(
    help="Manage release-signing keys.\n\nThe controller signs every release manifest and "
    "desired state with its active Ed25519 key; agents accept only what a key they trust "
    "signed (edge-agent --trusted-key FILE, written by keys init --out FILE, then the signed "
    "trust bundle the controller publishes on ef/v1/trust whenever keys change).",
    no_args_is_help=True,
)

Json = shell.Json


def trusted_pem(keys: list[pb.KeyInfo]) -> str:
    """Every key not revoked, one PEM block after another (active first)."""
    ordered = sorted(keys, key=lambda k: (not k.active, -k.created_at_ms))
    return "".join(k.public_key_pem for k in ordered if not k.revoked_at_ms)


@app.command("init")
def init(
    ctx: typer.Context,
    *,
    rotate: Annotated[
        bool,
        typer.Option(
            "--rotate",
            help="Make a new active key even when one exists. The old key stays in the "
            "agents' trust bundle (trusted for new messages through its overlap window, "
            "--desired-ttl of edge-controller run; for installed models until revoked).",
        ),
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Write every trusted public key (PEM, old and new) to FILE: the agents' "
            "--trusted-key.",
            metavar="FILE",
        ),
    ] = None,
    as_json: Json = False,
) -> None:
    """Create the signing key, or show the active one.

    Idempotent: returns the existing active key unless --rotate makes a new one. Writes
    every trusted public key (PEM) to --out FILE for the agents, or prints the active one.
    """
    with shell.controller(ctx) as client:
        key = client.init_key(rotate=rotate)
        keys = client.list_keys() if out is not None else []
    if out is not None:
        from edgefleet.common.artifacts import atomic_write  # grpc: not for --help

        atomic_write(out, trusted_pem(keys).encode())
    if as_json:
        output.print_json(output.key_dict(key))
        return
    verb = "created" if key.created else "already have"
    output.console.print(f"{verb} signing key [bold]{key.key_id}[/]")
    if out is not None:
        n = sum(1 for k in keys if not k.revoked_at_ms)
        output.console.print(f"{n} trusted public key(s) written to {out}")
    else:
        output.console.print(key.public_key_pem.rstrip(), markup=False)


@app.command("revoke")
def revoke(
    ctx: typer.Context,
    key_id: Annotated[str, typer.Argument(help="The key to revoke (edgectl keys list).")],
    *,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Revoke even though a device still runs (or falls back to) a release signed "
            "by it: that device loses the release at its next restart.",
        ),
    ] = False,
    as_json: Json = False,
) -> None:
    """Take a signing key out of the agents' trust bundle.

    The controller publishes a new bundle without it, signed by the keys still trusted;
    agents refuse anything signed by it from then on. Refused for the active key (rotate
    first), the only trusted key, and a key a device still needs (unless --force).
    """
    with shell.controller(ctx) as client:
        key = client.revoke_key(key_id, force=force)
    if as_json:
        output.print_json(output.key_dict(key))
        return
    output.console.print(f"revoked signing key [bold]{output.safe(key.key_id)}[/]")


@app.command("list")
def list_keys(ctx: typer.Context, as_json: Json = False) -> None:
    """List the signing keys; the active one signs new releases."""
    with shell.controller(ctx) as client:
        keys = client.list_keys()
    if as_json:
        output.print_json([output.key_dict(k) for k in keys])
        return
    t = output.table("KEY ID", "STATE", "CREATED", "TRUSTED UNTIL")
    for k in keys:
        if k.revoked_at_ms:
            state = "[red]revoked[/]"
        elif k.active:
            state = "[green]active[/]"
        else:
            state = "retired"
        until = output.when(k.trusted_until_ms) if k.trusted_until_ms else "-"
        if k.revoked_at_ms:
            until = output.when(k.revoked_at_ms)
        t.add_row(k.key_id, state, output.when(k.created_at_ms), until)
    output.print_table(t, empty="no keys yet: edgectl keys init")
