"""``edge-controller run``: parse flags into ``Settings``, start the controller, wait for a signal.

SIGTERM or SIGINT stops it gracefully (calls in flight finish) and the process exits 0.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from edgefleet.common import logs, oci
from edgefleet.common.errors import EdgeFleetError
from edgefleet.controller.config import (
    GrpcSettings,
    MetricsSettings,
    MqttSettings,
    RolloutSettings,
    Settings,
    split_address,
)

log = logging.getLogger(__name__)

app = typer.Typer(
    help="EdgeFleet controller: model registry, releases, devices and rollouts.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """EdgeFleet controller."""


@app.command()
def run(
    *,
    data_dir: Annotated[
        Path, typer.Option(help="Keys, blobs, the SQLite database and controller.json.")
    ] = Path("edgefleet-data"),
    grpc: Annotated[
        str, typer.Option(help="HOST:PORT the gRPC API listens on.")
    ] = "127.0.0.1:50051",
    mqtt: Annotated[str, typer.Option(help="MQTT broker URL.")] = "mqtt://127.0.0.1:1883",
    db: Annotated[
        str, typer.Option(help="SQLAlchemy URL (default: sqlite:///DATA_DIR/controller.db).")
    ] = "",
    advertise: Annotated[
        str, typer.Option(help="ArtifactService HOST:PORT for devices (default: the bound one).")
    ] = "",
    artifact_source: Annotated[
        list[str] | None,
        typer.Option(
            help="A blob source devices try before this controller (repeatable, in order): "
            "oci://REGISTRY/REPO where releases were pushed with `edgectl release push`, "
            "or another ArtifactService HOST:PORT."
        ),
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve Prometheus /metrics on this port.")
    ] = None,
    metrics_host: Annotated[str, typer.Option(help="Address /metrics listens on.")] = "127.0.0.1",
    mqtt_client_id: Annotated[
        str, typer.Option(help="MQTT client id (one per controller).")
    ] = "edgefleet-controller",
    rollout_tick: Annotated[
        float, typer.Option(help="Seconds between two looks at every unfinished rollout.", min=0.01)
    ] = 1.0,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
) -> None:
    """Run the controller until SIGTERM or SIGINT."""
    from edgefleet.controller.server import Controller

    json_env = os.environ.get("EDGEFLEET_LOG_JSON")
    logs.setup(log_level, json_lines=None if json_env is None else json_env == "1")
    if log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise typer.BadParameter(f"unknown log level {log_level!r}", param_hint="--log-level")
    try:
        split_address(grpc)
        if advertise:
            split_address(advertise)
        sources = tuple(artifact_source or ())
        for source in sources:
            if oci.is_source(source):
                oci.RegistryRef.from_source(source)
            else:
                split_address(source)
    except EdgeFleetError as exc:
        raise typer.BadParameter(str(exc)) from exc
    settings = Settings(
        data_dir=data_dir,
        db_url=db,
        grpc=GrpcSettings(bind=grpc, advertise=advertise, extra_sources=sources),
        mqtt=MqttSettings(url=mqtt, client_id=mqtt_client_id),
        metrics=MetricsSettings(port=metrics_port, host=metrics_host),
        rollouts=RolloutSettings(tick_s=rollout_tick),
    )
    controller = Controller(settings)
    stop = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        controller.start()
    except EdgeFleetError as exc:
        log.error("cannot start: %s", exc)
        sys.exit(1)
    try:
        stop.wait()
    finally:
        controller.stop()


def main() -> None:
    app()
