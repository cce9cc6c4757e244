"""``edgectl top``: a fleet's devices and their latest telemetry, refreshed in place.

Reads ``ListDevices`` (each device's last status, presence and telemetry window) every
``--interval`` seconds and redraws one table with ``rich.live``. Rates are the window's
counts over its length (``requests / window_s``); a figure a device did not report (power
without a sensor, latency of a window without requests) shows as "—", never as a made-up
number. ``--once`` prints one table (or one JSON document with ``--json``) and exits.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from edgefleet.common.errors import EdgeFleetError
from edgefleet.edgectl import output, shell

if TYPE_CHECKING:  # grpc, protobuf and rich: loaded when a command calls, not for --help
    from rich.table import Table

    from edgefleet.edgectl.client import ControllerClient
    from edgefleet.v1 import controller_pb2 as pb

ABSENT = "—"
COLUMNS = (
    "DEVICE", "ONLINE", "RELEASE", "PHASE", "P50 MS", "P95 MS",
    "REQ/S", "ERR/S", "REFUSED/S", "POWER W", "ENERGY MJ/INF",
)  # fmt: skip


@dataclass(frozen=True)
class DeviceLine:
    """One device as ``top`` shows it; ``None`` where the device reported no such figure."""

    device_id: str
    online: bool
    release: str
    phase: str
    p50_ms: float | None
    p95_ms: float | None
    requests_per_s: float | None
    errors_per_s: float | None
    refused_per_s: float | None
    """Refused for the caller's inputs (in neither requests nor errors: not the error rate)."""
    power_w: float | None
    energy_per_inference_mj: float | None


def line(d: pb.DeviceInfo) -> DeviceLine:
    p50 = p95 = rps = eps = refused = power = energy = None
    if d.HasField("telemetry"):
        x = d.telemetry
        if x.requests > 0:  # percentiles of an empty window are no measurement
            p50, p95 = x.p50_ms, x.p95_ms
        if x.window_s > 0:
            rps, eps = x.requests / x.window_s, x.errors / x.window_s
            refused = x.refused / x.window_s
        if x.HasField("power_w"):
            power = x.power_w
        if x.HasField("energy_per_inference_j"):
            energy = x.energy_per_inference_j * 1000.0
    return DeviceLine(
        device_id=d.device_id,
        online=d.online,
        release=d.active_release,
        phase=output.phase_name(d.phase),
        p50_ms=p50,
        p95_ms=p95,
        requests_per_s=rps,
        errors_per_s=eps,
        refused_per_s=refused,
        power_w=power,
        energy_per_inference_mj=energy,
    )


def lines(devices: Iterable[pb.DeviceInfo]) -> list[DeviceLine]:
    return sorted((line(d) for d in devices), key=lambda x: x.device_id)


def figure(value: float | None, digits: int = 2) -> str:
    return ABSENT if value is None else f"{value:.{digits}f}"


def styled(phase: str) -> str:
    style = output.PHASE_STYLES.get(phase)
    return f"[{style}]{phase}[/]" if style else (phase or ABSENT)


def render(fleet: str, rows: list[DeviceLine], *, problem: str = "") -> Table:
    stamp = datetime.now().astimezone().strftime("%H:%M:%S")
    t = output.table(*COLUMNS, title=f"fleet {fleet}: {len(rows)} devices at {stamp}")
    for c in t.columns[4:]:
        c.justify = "right"
    for r in rows:
        t.add_row(
            output.safe(r.device_id),
            "[green]yes[/]" if r.online else "[red]no[/]",
            output.safe(r.release) or ABSENT,
            styled(r.phase),
            figure(r.p50_ms),
            figure(r.p95_ms),
            figure(r.requests_per_s, 1),
            figure(r.errors_per_s),
            figure(r.refused_per_s),
            figure(r.power_w),
            figure(r.energy_per_inference_mj),
        )
    if problem:
        t.caption = f"[red]{output.safe(problem)}[/] (showing the last answer)"
    return t


def snapshot(client: ControllerClient, fleet: str) -> list[DeviceLine]:
    rows = lines(client.list_devices(fleet))
    if not rows:
        shell.fail(f"unknown fleet: {fleet} (no device has registered in it)")
    return rows


def as_dicts(rows: list[DeviceLine]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]


def top(
    ctx: typer.Context,
    *,
    fleet: Annotated[
        str, typer.Option("--fleet", "-f", help="The fleet to watch.", metavar="FLEET")
    ],
    interval: Annotated[
        float,
        typer.Option("--interval", "-n", help="Seconds between refreshes.", min=0.2),
    ] = 2.0,
    once: Annotated[bool, typer.Option("--once", help="Print one table and exit.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="JSON for scripts (one line per refresh).")
    ] = False,
) -> None:
    """Watch a fleet's devices live: latency, throughput, errors and power per device.

    One row per device, sorted by id: online, active release, install phase, p50 and p95
    latency (ms), requests and errors per second, requests refused for the caller's inputs
    per second (not in requests or errors, so not in the rollout's error rate), power (W) and
    energy per inference (mJ) from its latest telemetry window; "—" where the device reported
    no such figure.
    Ctrl-C stops it.
    """
    with shell.controller(ctx) as client:
        rows = snapshot(client, fleet)
        if once:
            if as_json:
                output.print_json(as_dicts(rows))
            else:
                output.console.print(render(fleet, rows))
            return
        try:
            if as_json:
                _json_lines(client, fleet, rows, interval)
            else:
                _live(client, fleet, rows, interval)
        except KeyboardInterrupt:
            return  # the way out of a live view, not an error


def _json_lines(
    client: ControllerClient, fleet: str, rows: list[DeviceLine], interval: float
) -> None:
    while True:
        output.print_json(as_dicts(rows), compact=True)
        time.sleep(interval)
        rows = snapshot(client, fleet)


def _live(client: ControllerClient, fleet: str, rows: list[DeviceLine], interval: float) -> None:
    from rich.live import Live  # rich: not for --help

    with Live(render(fleet, rows), console=output.console, auto_refresh=False) as live:
        while True:
            time.sleep(interval)
            try:
                rows, problem = snapshot(client, fleet), ""
            except EdgeFleetError as exc:  # the controller restarting: keep watching
                problem = shell.one_line(str(exc))
            live.update(render(fleet, rows, problem=problem), refresh=True)
