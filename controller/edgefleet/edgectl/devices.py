"""``edgectl devices``: the devices the controller knows, as they last reported."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated

import typer

from edgefleet.edgectl import output, shell

if TYPE_CHECKING:  # grpc and protobuf: loaded when a command calls, not for --help
    from edgefleet.edgectl.client import ControllerClient
    from edgefleet.v1 import controller_pb2 as pb

PAGE = 1000  # devices per ListDevices call (the server's cap)

app = typer.Typer(
    help="List devices and what they run.\n\nDevices register themselves when their agent "
    "first reports over MQTT.",
    no_args_is_help=True,
)


@app.command("list")
def list_devices(
    ctx: typer.Context,
    *,
    fleet: shell.OnlyFleet = "",
    as_json: shell.Json = False,
    containers: Annotated[
        bool,
        typer.Option(
            "--containers",
            help="Show the release containers instead: state, image, restarts, CPU, memory.",
        ),
    ] = False,
    hardware: Annotated[
        bool,
        typer.Option(
            "--hardware",
            help="Show the devices' hardware instead: arch, cores, memory, CPU features, GPUs, "
            "ONNX Runtime providers, and the provider the active release runs on (and why, "
            "when it fell back).",
        ),
    ] = False,
    limit: Annotated[
        int,
        typer.Option(
            "--limit",
            "-n",
            min=1,
            help="Show the first N devices (by fleet and id); a note says how many more.",
            metavar="N",
        ),
    ] = 500,
    every: Annotated[
        bool, typer.Option("--all", help="Every device, however many (paged from the server).")
    ] = False,
) -> None:
    """List devices and their state.

    Online, install phase, active release, generation applied/desired, p50 latency from
    telemetry, the container of a container release (state and memory; "-": in-process),
    Predict endpoint and last error of each device; HW is arch, cores, memory and the int8
    CPU features (vnni, dotprod), PROVIDER the execution provider the active release runs on,
    "(fallback)" when it is not the release's first preference (``--hardware`` says why).
    ``--containers``: one row per device serving a container release, with its container's
    figures as of its last status. The first ``--limit`` devices (500), fetched in pages;
    ``--all`` lists every one.
    """
    with shell.controller(ctx) as client:
        devices, total = _fetch(client, fleet, limit=0 if every else limit)
    if total > len(devices):
        more = total - len(devices)
        output.note(
            f"{more:,} more device{'s' if more != 1 else ''} of {total:,}: --all lists them"
        )
    if as_json:
        output.print_json([output.device_dict(d) for d in devices])
        return
    if containers:
        _print_containers(devices)
        return
    if hardware:
        _print_hardware(devices)
        return
    t = output.table(
        "DEVICE",
        "FLEET",
        "ONLINE",
        "PHASE",
        "RELEASE",
        "GEN",
        "P50",
        "CONTAINER",
        "HW",
        "PROVIDER",
        "ENDPOINT",
        "LAST ERROR",
    )
    for d in devices:
        served = d.HasField("telemetry") and d.telemetry.requests > 0
        p50 = f"{d.telemetry.p50_ms:.2f} ms" if served else "-"
        t.add_row(
            output.safe(d.device_id),
            output.safe(d.fleet),
            "[green]yes[/]" if d.online else "[red]no[/]",
            output.styled_phase(d.phase),
            output.safe(d.active_release) or "-",
            f"{d.generation_applied}/{d.generation_desired}",
            p50,
            output.container_cell(d.container) if d.HasField("container") else "-",
            output.hardware_cell(d.hardware) if d.HasField("hardware") else "-",
            output.provider_cell(d),
            output.safe(d.predict_endpoint) or "-",
            output.safe(d.last_error),
        )
    output.print_table(t, empty="no devices")


def _fetch(client: ControllerClient, fleet: str, *, limit: int) -> tuple[list[pb.DeviceInfo], int]:
    """The first ``limit`` devices of ``fleet`` (0: all), page after page, and how many there
    are in all."""
    devices: list[pb.DeviceInfo] = []
    token, total = "", 0
    while True:
        size = min(limit - len(devices), PAGE) if limit else PAGE
        reply = client.devices_page(fleet, page_size=size, page_token=token)
        devices.extend(reply.devices)
        total = max(reply.total, len(devices))
        token = reply.next_page_token
        if not token or (limit and len(devices) >= limit):
            return devices, total


def _print_containers(devices: Sequence[pb.DeviceInfo]) -> None:
    """One row per device serving a container release: its container as last reported."""
    t = output.table("DEVICE", "RELEASE", "STATE", "RESTARTS", "CPU", "MEMORY", "IMAGE")
    for d in devices:
        if not d.HasField("container"):
            continue
        c = d.container
        memory = output.size_text(c.memory_bytes)
        if c.memory_limit_bytes:
            memory += f" ({100 * c.memory_bytes / c.memory_limit_bytes:.0f}%)"
        t.add_row(
            output.safe(d.device_id),
            output.safe(c.release),
            output.container_state(c),
            str(c.restarts),
            f"{c.cpu_seconds:.1f}s",
            memory,
            output.safe(c.image.removeprefix("sha256:")[:12]) or "-",
        )
    output.print_table(t, empty="no device serves a container release")


def _print_hardware(devices: Sequence[pb.DeviceInfo]) -> None:
    """One row per device: its hardware as its agent probed it, and its active provider."""
    t = output.table(
        "DEVICE", "ARCH", "CORES", "MEMORY", "CPU", "GPU", "BOARD", "ORT", "PROVIDERS", "ACTIVE"
    )
    for d in devices:
        h = d.hardware
        gpus = ", ".join(
            g.name + (f" ({output.size_text(g.memory_bytes)})" if g.memory_bytes else "")
            for g in h.gpus
        )
        active = output.provider_cell(d)
        if d.provider_fallback:
            active += f": {output.safe(d.provider_fallback)}"
        t.add_row(
            output.safe(d.device_id),
            output.safe(h.arch) or "-",
            str(h.cores) if h.cores else "-",
            output.size_text(h.memory_bytes) if h.memory_bytes else "-",
            output.safe(",".join(h.cpu_features)) or "-",
            output.safe(gpus) or "-",
            output.safe(h.board) or "-",
            output.safe(h.onnxruntime_version) or "-",
            output.safe(",".join(output.short_provider(p) for p in h.providers)) or "-",
            active,
        )
    output.print_table(t, empty="no devices")
