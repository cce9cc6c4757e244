"""``edgectl keys``: the controller's release-signing keys (Ed25519).

Agents trust the public key that ``keys init --out FILE`` writes (``edge-agent --trusted-key``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgefleet.common.artifacts import atomic_write
from edgefleet.edgectl import output, shell

app = typer.Typer(
    help="Manage release-signing keys.\n\nThe controller signs every release manifest and "
    "desired state with its active Ed25519 key; agents accept only what a key they trust "
    "signed (edge-agent --trusted-key FILE, written by keys init --out FILE).",
    no_args_is_help=True,
)

Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


@app.command("init")
def init(
    ctx: typer.Context,
    *,
    rotate: Annotated[
        bool, typer.Option("--rotate", help="Make a new active key even when one exists.")
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Write the active public key (PEM) to FILE: the agents' --trusted-key.",
            metavar="FILE",
        ),
    ] = None,
    as_json: Json = False,
) -> None:
    """Create the signing key, or show the active one.

    Idempotent: returns the existing active key unless --rotate makes a new one. Writes
    its public key (PEM) to --out FILE for the agents, or prints it.
    """
    with shell.controller(ctx) as client:
        key = client.init_key(rotate=rotate)
    if out is not None:
        atomic_write(out, key.public_key_pem.encode())
    if as_json:
        output.print_json(output.key_dict(key))
        return
    verb = "created" if key.created else "already have"
    output.console.print(f"{verb} signing key [bold]{key.key_id}[/]")
    if out is not None:
        output.console.print(f"public key written to {out}")
    else:
        output.console.print(key.public_key_pem.rstrip(), markup=False)


@app.command("list")
def list_keys(ctx: typer.Context, as_json: Json = False) -> None:
    """List the signing keys; the active one signs new releases."""
    with shell.controller(ctx) as client:
        keys = client.list_keys()
    if as_json:
        output.print_json([output.key_dict(k) for k in keys])
        return
    t = output.table("KEY ID", "ACTIVE", "CREATED")
    for k in keys:
        t.add_row(k.key_id, "[green]yes[/]" if k.active else "no", output.when(k.created_at_ms))
    output.print_table(t, empty="no keys yet: edgectl keys init")
