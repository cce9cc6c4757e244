"""``edgectl predict``: run one inference on a device, through its agent's Predict API.

The device's Predict endpoint comes from the controller (``ListDevices``) unless
``--endpoint`` names one (an enrolled device lists its mTLS peer listener, which serves
neighbours of its fleet only: its local Predict is the one a person can call); every array of
the ``.npz`` file is sent as a named input tensor.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from edgefleet.edgectl import output, shell

if TYPE_CHECKING:  # numpy and grpc: loaded when predict runs, not for --help
    from edgefleet.edgectl.inference import Array


def _array_dict(a: Array) -> dict[str, Any]:
    return {"dtype": a.dtype.name, "shape": list(a.shape), "data": a.tolist()}


def predict(
    ctx: typer.Context,
    *,
    device: Annotated[
        str,
        typer.Option(
            "--device", "-d", help="Device to run on.", show_default=False, metavar="DEVICE"
        ),
    ],
    input_path: Annotated[
        Path,
        typer.Option(
            "--input",
            "-i",
            help="An .npz file; each array is one named input (np.savez(f, pixels=x)).",
            show_default=False,
            metavar="FILE.npz",
        ),
    ],
    output_names: Annotated[
        list[str] | None,
        typer.Option(
            "--output", "-o", help="Only this output (repeatable); default: all.", metavar="NAME"
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--output-json", "--json", help="Print the outputs as JSON.")
    ] = False,
    endpoint: Annotated[
        str | None,
        typer.Option(
            "--endpoint",
            help="Call this Predict address (HOST:PORT or unix:PATH) instead of the one the "
            "controller lists: an enrolled (mTLS) device lists its peer listener, for its "
            "fleet's neighbours only; give its local Predict (agent.json's predict_endpoint).",
            show_default=False,
            metavar="ADDRESS",
        ),
    ] = None,
) -> None:
    """Run an inference on a device, through its agent.

    Looks the device's Predict endpoint up at the controller (or calls --endpoint: an
    enrolled device's listed endpoint is mTLS, for its neighbours only), sends every array of
    the .npz file as the input tensor of that name, and prints the outputs (all of them, or
    those named with --output). Example: python -c "import numpy as np;
    np.savez('x.npz', pixels=np.zeros((1, 64), np.float32))".
    """
    import numpy as np

    from edgefleet.edgectl.inference import InferenceClient, load_npz

    inputs = load_npz(input_path)
    if endpoint is None:
        with shell.controller(ctx) as client:
            info = client.find_device(device)
        if not info.predict_endpoint:
            shell.fail(f"device {device} has not reported a Predict endpoint")
        endpoint = info.predict_endpoint
    deadline = shell.settings(ctx).deadline_s
    with InferenceClient(endpoint, name=f"device {device}", deadline_s=deadline) as agent:
        result = agent.predict(inputs, output_names=output_names or ())
    if as_json:
        output.print_json(
            {
                "device_id": result.device_id or device,
                "release": result.release,
                "outputs": {k: _array_dict(v) for k, v in result.outputs.items()},
            },
            compact=True,
        )
        return
    from rich.text import Text  # rich: not for --help

    ran = output.safe(result.release) or "?"
    output.console.print(f"device [bold]{output.safe(device)}[/] ran [bold]{ran}[/]")
    t = output.table("OUTPUT", "DTYPE", "SHAPE", "VALUES")
    for name, a in result.outputs.items():
        values = np.array2string(a, precision=4, threshold=40, edgeitems=3, suppress_small=True)
        t.add_row(output.safe(name), a.dtype.name, Text(str(list(a.shape))), Text(values))
    output.console.print(t)
