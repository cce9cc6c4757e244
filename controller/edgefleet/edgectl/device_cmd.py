"""``edgectl device``: device identities in the registry: enroll, revoke, quarantine, remove.

``enroll`` registers a device in a fleet (the registry's word on its fleet from then on) and
prints a one-time token with a short expiry; on the device, ``edge-agent enroll --controller
HOST:PORT --token-file FILE`` trades it for a certificate. ``revoke`` puts the device's
certificates on the CRL; ``quarantine`` keeps it connected but out of rollouts; ``remove``
revokes and forgets it. (What devices report is ``edgectl devices list``.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from edgefleet.common.durations import parse_duration
from edgefleet.common.errors import InvalidInputError
from edgefleet.edgectl import output, shell

if TYPE_CHECKING:  # protobuf: loaded when a command calls, not for --help
    from edgefleet.v1 import enroll_pb2 as pb

app = typer.Typer(
    help="Device identities: enroll (one-time token), revoke (CRL), quarantine (out of "
    "rollouts), remove, list.\n\nOn the device: edge-agent enroll --controller HOST:PORT "
    "--ca-file CA.pem --token-file FILE (HOST:PORT: the controller's --enroll-listen; CA.pem: "
    "its DATA_DIR/ca/ca.pem; a controller without --tls: its --grpc and --insecure).",
    no_args_is_help=True,
)

Json = shell.Json
TokenFile = shell.TokenFile
Device = Annotated[str, typer.Argument(help="Device id.", metavar="DEVICE")]


def identity_dict(d: pb.DeviceIdentity) -> dict[str, Any]:
    return {
        "device_id": d.device_id,
        "fleet": d.fleet,
        "labels": dict(d.labels),
        "state": d.state,
        "cert_serial": d.cert_serial or None,
        "cert_not_after_ms": d.cert_not_after_ms or None,
        "created_at_ms": d.created_at_ms,
    }


def _labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(
                f"label must be KEY=VALUE, got {part!r}", param_hint="--labels"
            )
        labels[key.strip()] = value.strip()
    return labels


def _said(d: pb.DeviceIdentity, as_json: bool, what: str) -> None:
    if as_json:
        output.print_json(identity_dict(d))
    else:
        output.note(f"device {output.safe(d.device_id)} ({output.safe(d.fleet)}): {what}")


@app.command("enroll")
def enroll(
    ctx: typer.Context,
    device: Device,
    *,
    fleet: Annotated[str, typer.Option("--fleet", "-f", help="Its fleet.", metavar="FLEET")],
    labels: Annotated[
        str, typer.Option("--labels", help="KEY=VALUE,... labels.", metavar="LABELS")
    ] = "",
    ttl: Annotated[
        str, typer.Option("--ttl", help="How long the token is good for (30s, 15m, 2h).")
    ] = "15m",
    token_file: TokenFile = None,
    as_json: Json = False,
) -> None:
    """Register DEVICE in FLEET and print its one-time enrollment token."""
    try:
        ttl_s = parse_duration(ttl, what="--ttl")
    except InvalidInputError as exc:
        raise typer.BadParameter(str(exc), param_hint="--ttl") from None
    with shell.controller(ctx) as client:
        made = client.enroll_device(device, fleet=fleet, labels=_labels(labels), token_ttl_s=ttl_s)
    shown = shell.keep_token(made.token, token_file)
    if as_json:
        expires = {"token_expires_at_ms": made.token_expires_at_ms}
        output.print_json({**identity_dict(made.device), **expires, **shown})
        return
    output.note(
        f"device {output.safe(made.device.device_id)} enrolled in fleet "
        f"{output.safe(made.device.fleet)}; its token is good once, until "
        f"{output.when(made.token_expires_at_ms)}. On the device: edge-agent enroll "
        "--controller HOST:PORT --ca-file CA.pem --token-file FILE"
    )
    if token_file is not None:
        output.note(f"token written to {output.safe(str(token_file))}")
    else:
        print(made.token)


@app.command("revoke")
def revoke(ctx: typer.Context, device: Device, *, as_json: Json = False) -> None:
    """Revoke DEVICE: its certificates go on the CRL, rollouts skip it, renewals fail."""
    with shell.controller(ctx) as client:
        _said(client.revoke_device(device), as_json, "revoked")


@app.command("quarantine")
def quarantine(
    ctx: typer.Context,
    device: Device,
    *,
    lift: Annotated[bool, typer.Option("--lift", help="Take it back into rollouts.")] = False,
    as_json: Json = False,
) -> None:
    """Leave DEVICE out of rollouts (its certificate stays valid); --lift undoes it."""
    with shell.controller(ctx) as client:
        d = client.quarantine_device(device, lift=lift)
    _said(d, as_json, "back in rollouts" if lift else "quarantined")


@app.command("remove")
def remove(ctx: typer.Context, device: Device, *, as_json: Json = False) -> None:
    """Remove DEVICE from the registry (its certificates are revoked first)."""
    with shell.controller(ctx) as client:
        _said(client.remove_device(device), as_json, "removed")


@app.command("list")
def list_identities(
    ctx: typer.Context,
    *,
    fleet: shell.OnlyFleet = "",
    as_json: Json = False,
) -> None:
    """List enrolled devices: fleet, state, newest certificate and its expiry."""
    with shell.controller(ctx) as client:
        devices = client.list_identities(fleet)
    if as_json:
        output.print_json([identity_dict(d) for d in devices])
        return
    t = output.table("DEVICE", "FLEET", "STATE", "CERTIFICATE", "EXPIRES", "LABELS")
    for d in devices:
        t.add_row(
            output.safe(d.device_id),
            output.safe(d.fleet),
            d.state,
            d.cert_serial[:16] or "-",
            output.when(d.cert_not_after_ms),
            output.safe(",".join(f"{k}={v}" for k, v in sorted(d.labels.items()))),
        )
    output.print_table(t, empty="no enrolled devices")
