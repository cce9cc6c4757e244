"""``edgectl model``: register ONNX models with the controller and list them.

``model add`` streams the file in chunks; the controller checks that it is ONNX and reads its
input/output signature, so a bad file comes back as the controller's one-line reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from edgefleet.common.types import validate_name
from edgefleet.edgectl import output, shell
from edgefleet.edgectl.client import file_chunks

app = typer.Typer(
    help="Register and list ONNX models.\n\nEach upload of a name becomes its next version; "
    "releases pack one version.",
    no_args_is_help=True,
)

Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


@app.command("add")
def add(
    ctx: typer.Context,
    *,
    path: Annotated[
        Path, typer.Argument(help="The .onnx file to upload.", show_default=False, metavar="PATH")
    ],
    name: Annotated[
        str,
        typer.Option(
            "--name", "-n", help="Model name (a-z 0-9 . _ -).", show_default=False, metavar="NAME"
        ),
    ],
    description: Annotated[
        str, typer.Option("--description", "-d", help="Free text.", metavar="TEXT")
    ] = "",
    as_json: Json = False,
) -> None:
    """Upload an ONNX model as the next version of --name.

    Streams the file to the controller, which checks it is a valid ONNX model and records
    its inputs and outputs; a file that is not ONNX is refused with the reason.
    """
    validate_name("model", name)
    if not path.is_file():
        shell.fail(f"no such file: {path}")
    size = path.stat().st_size
    progress = Progress(
        TextColumn("uploading {task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=output.err_console,
        transient=True,
        disable=as_json,
    )
    with progress, shell.controller(ctx) as client:
        task = progress.add_task(path.name, total=size)
        chunks = file_chunks(path, on_chunk=lambda n: progress.advance(task, n))
        model = client.upload_model(chunks, name=name, size=size, description=description)
    if as_json:
        output.print_json(output.model_dict(model))
        return
    output.console.print(
        f"registered [bold]{model.name}[/] version {model.version} "
        f"({output.size_text(model.size)}, {model.digest})"
    )
    output.console.print(f"  inputs:  {output.specs_text(model.inputs)}", markup=False)
    output.console.print(f"  outputs: {output.specs_text(model.outputs)}", markup=False)


@app.command("list")
def list_models(
    ctx: typer.Context,
    *,
    name: Annotated[
        str, typer.Option("--name", "-n", help="Only this model.", metavar="NAME")
    ] = "",
    as_json: Json = False,
) -> None:
    """List registered models and their versions."""
    with shell.controller(ctx) as client:
        models = client.list_models(name)
    if as_json:
        output.print_json([output.model_dict(m) for m in models])
        return
    t = output.table("NAME", "VERSION", "SIZE", "OPSET", "INPUTS", "OUTPUTS", "DIGEST", "CREATED")
    for m in models:
        t.add_row(
            m.name,
            str(m.version),
            output.size_text(m.size),
            str(m.opset),
            output.specs_text(m.inputs),
            output.specs_text(m.outputs),
            m.digest.removeprefix("sha256:")[:12],
            output.when(m.created_at_ms),
        )
    output.print_table(t, empty="no models")
