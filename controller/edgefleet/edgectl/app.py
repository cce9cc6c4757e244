"""``edgectl``: the operator CLI over the controller's gRPC API.

One module per command group (``keys``, ``models``, ``releases``, ``rollouts``, ``devices``)
and per top-level command (``deploy`` and ``rollback``, ``events``, ``predict``, ``demo``);
each parses its arguments, calls ``ControllerClient`` and prints with ``output``. ``shell``
turns every expected failure into one ``error: ...`` line and a non-zero exit code.
"""

from __future__ import annotations

from typing import Annotated

import typer

from edgefleet.common.deadlines import DEFAULT_DEADLINE_S
from edgefleet.edgectl import (
    audit,
    demo_cmd,
    deploying,
    device_cmd,
    devices,
    events,
    keys,
    models,
    operators,
    predicting,
    releases,
    rollouts,
    shell,
    top,
)

HELP = """Operate an EdgeFleet: register ONNX models, release them signed, deploy them to
fleets of edge devices and watch them converge.

A typical session: keys init --out trusted.pem (agents trust it), model add digits.onnx
--name digits, release create digits --version 1.0.0, deploy digits:1.0.0 --fleet
factory-a --strategy canary --canary 10%, rollout list, devices list, predict --device
edge-a1 --input x.npz; rollback --fleet factory-a when a release misbehaves. Every listing takes
--json for scripts. Try it all on one machine with: edgectl demo."""

app = typer.Typer(
    cls=shell.EdgectlGroup,
    help=HELP,
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(keys.app, name="keys")
app.add_typer(models.app, name="model")
app.add_typer(releases.app, name="release")
app.add_typer(devices.app, name="devices")
app.add_typer(device_cmd.app, name="device")
app.command("deploy")(deploying.deploy)
app.add_typer(rollouts.app, name="rollout")
app.command("rollback")(deploying.rollback)
app.command("top")(top.top)
app.command("events")(events.events)
app.command("predict")(predicting.predict)
app.add_typer(operators.app, name="operator")
app.command("audit")(audit.audit)
app.command("demo")(demo_cmd.demo)


@app.callback()
def root(
    ctx: typer.Context,
    controller: Annotated[
        str,
        typer.Option(
            "--controller",
            "-c",
            envvar="EDGECTL_CONTROLLER",
            help="The controller's operator API, HOST:PORT (edge-controller run --api; default: "
            f"`controller` in the config file, else {shell.DEFAULT_CONTROLLER}). The token comes "
            "from EDGECTL_TOKEN, EDGECTL_TOKEN_FILE or `token_file` in the config file "
            "(EDGECTL_CONFIG, default ~/.config/edgefleet/edgectl.toml).",
            metavar="ADDR",
        ),
    ] = "",
    deadline: Annotated[
        float,
        typer.Option(
            "--deadline",
            help="Deadline of each gRPC call, seconds.",
            min=0.1,
            metavar="SECONDS",
        ),
    ] = DEFAULT_DEADLINE_S,
    ca_file: Annotated[
        str,
        typer.Option(
            "--ca-file",
            envvar="EDGECTL_CA_FILE",
            help="CA bundle the operator API's TLS certificate must chain to (a --tls "
            "controller writes it as DATA_DIR/api-ca.pem; default: `ca_file` in the config "
            "file). Without one the channel is plaintext (controllers run with --insecure).",
            metavar="PEM",
        ),
    ] = "",
) -> None:
    ctx.obj = shell.load_settings(controller=controller, deadline_s=deadline, ca_file=ca_file)


def main() -> None:
    app()
