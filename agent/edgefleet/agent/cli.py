"""``edge-agent run``: parse settings, run the agent until SIGTERM/SIGINT, exit 0.

Every config-file key is also a flag (and an ``EDGEFLEET_AGENT_*`` variable); flags win. A
bad setting exits 2 with one line saying what to fix; no business logic lives here.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer

from edgefleet.agent.config import AgentSettings
from edgefleet.agent.config import load as config_load
from edgefleet.common import logs
from edgefleet.common.errors import EdgeFleetError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="EdgeFleet device agent.")
log = logging.getLogger("edgefleet.agent")


class _Context(logging.Filter):
    """Every record of this process is about one device: say which (JSON lines show it)."""

    def __init__(self, *, device: str, fleet: str) -> None:
        super().__init__()
        self._device, self._fleet = device, fleet

    def filter(self, record: logging.LogRecord) -> bool:
        record.device = self._device
        record.fleet = self._fleet
        return True


@app.callback()
def _root() -> None:
    """EdgeFleet device agent."""


@app.command()
def run(
    *,
    config: Annotated[
        Path | None, typer.Option(help="TOML config file (same keys as the flags).")
    ] = None,
    device_id: Annotated[str | None, typer.Option(help="Unique device id (a-z 0-9 . _ -).")] = None,
    fleet: Annotated[str | None, typer.Option(help="Fleet of the device.")] = None,
    mqtt: Annotated[
        str | None,
        typer.Option(
            help="Broker URL, mqtt://host:port; a clustered broker's nodes comma-separated "
            "(reconnects go to the next in turn)."
        ),
    ] = None,
    mqtt_ca: Annotated[
        Path | None, typer.Option(help="CA bundle of an mqtts:// broker (default: enrolled).")
    ] = None,
    mqtt_cert: Annotated[
        Path | None,
        typer.Option(help="Client certificate for mqtts:// (default: the enrolled identity's)."),
    ] = None,
    mqtt_key: Annotated[
        Path | None, typer.Option(help="Its private key (default: the enrolled identity's).")
    ] = None,
    mqtt_password_file: Annotated[
        Path | None,
        typer.Option(help="File with the broker password for the URL's user (never in argv)."),
    ] = None,
    mqtt_keepalive: Annotated[
        int | None,
        typer.Option(help="MQTT keepalive seconds: a silent link is dead after 1.5x (default 30)."),
    ] = None,
    controller: Annotated[
        str | None,
        typer.Option(help="HOST:PORT of the controller's ArtifactService (fallback source)."),
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="State, blobs and install slots.")] = None,
    predict_listen: Annotated[
        str | None, typer.Option(help="HOST:PORT for Predict (port 0: any free port).")
    ] = None,
    predict_socket: Annotated[
        str | None,
        typer.Option(
            help="Unix socket for local apps' Predict, with shared-memory inputs (default "
            "DATA_DIR/predict.sock, mode 0660; relative: under --data-dir; '' to disable)."
        ),
    ] = None,
    peer_listen: Annotated[
        str | None,
        typer.Option(
            help="HOST:PORT of the mTLS listener neighbours forward Predict to (enrolled "
            "agents; a client certificate of this fleet on the signed roster is required; "
            "default: --predict-listen's host, any free port; advertised to the fleet).",
        ),
    ] = None,
    insecure: Annotated[
        bool | None,
        typer.Option(
            "--insecure",
            help="Plaintext to the controller and neighbours even when enrolled (a warning "
            "at start). An agent that never enrolled has no certificate and is plaintext "
            "anyway (it says so at start).",
        ),
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Prometheus /metrics port (0: any free port, -1: off).")
    ] = None,
    trusted_key: Annotated[
        list[Path] | None, typer.Option(help="PEM public key to trust (repeatable; at least one).")
    ] = None,
    label: Annotated[list[str] | None, typer.Option(help="KEY=VALUE label (repeatable).")] = None,
    telemetry_interval: Annotated[
        float | None, typer.Option(help="Seconds between telemetry reports (default 10).")
    ] = None,
    outbox_max: Annotated[
        int | None,
        typer.Option(
            help="Events and telemetry kept while the broker is out of reach (default 10000; "
            "beyond it the oldest are dropped and counted)."
        ),
    ] = None,
    fetch_deadline: Annotated[
        float | None, typer.Option(help="Seconds one download attempt may take (default 300).")
    ] = None,
    fetch_stall: Annotated[
        float | None,
        typer.Option(
            help="Seconds without a byte after which a download is cut and resumed (default 30)."
        ),
    ] = None,
    predict_workers: Annotated[
        int | None, typer.Option(help="gRPC serving threads (default 8).")
    ] = None,
    failover: Annotated[
        bool | None,
        typer.Option(
            "--failover/--no-failover",
            help="Forward a Predict this agent cannot serve to a neighbour (default on).",
        ),
    ] = None,
    failover_deadline: Annotated[
        float | None, typer.Option(help="Seconds one forwarded Predict may take (default 2).")
    ] = None,
    failover_require_roster: Annotated[
        bool | None,
        typer.Option(
            "--failover-require-roster/--no-failover-require-roster",
            help="Forward only to neighbours the controller's signed fleet roster lists, even "
            "before the first roster arrives (default: enforced once one is held).",
        ),
    ] = None,
    predict_max_concurrent: Annotated[
        int | None,
        typer.Option(help="Predict calls served at once; beyond: RESOURCE_EXHAUSTED (default 16)."),
    ] = None,
    predict_max_bytes: Annotated[
        int | None,
        typer.Option(help="Largest Predict request/reply in bytes (default 16 MiB)."),
    ] = None,
    containers: Annotated[
        bool | None,
        typer.Option(
            "--containers/--no-containers",
            help="Run container releases where the local Docker answers at start (default "
            "on; off: in-process releases only, Docker is never asked).",
        ),
    ] = None,
    power_root: Annotated[
        Path | None,
        typer.Option(help="Root of the /sys and /proc trees power sensors are read from."),
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = None,
) -> None:
    """Run the agent until SIGTERM or SIGINT."""
    flags: dict[str, Any] = {
        "device_id": device_id,
        "fleet": fleet,
        "mqtt": mqtt,
        "mqtt_ca": mqtt_ca,
        "mqtt_cert": mqtt_cert,
        "mqtt_key": mqtt_key,
        "mqtt_password_file": mqtt_password_file,
        "mqtt_keepalive": mqtt_keepalive,
        "controller": controller,
        "data_dir": data_dir,
        "predict_listen": predict_listen,
        "predict_socket": predict_socket,
        "metrics_port": metrics_port,
        "peer_listen": peer_listen,
        "insecure": insecure,
        "trusted_keys": trusted_key or None,
        "labels": label or None,
        "telemetry_interval": telemetry_interval,
        "outbox_max": outbox_max,
        "fetch_deadline": fetch_deadline,
        "fetch_stall": fetch_stall,
        "predict_workers": predict_workers,
        "failover": failover,
        "failover_deadline": failover_deadline,
        "failover_require_roster": failover_require_roster,
        "predict_max_concurrent": predict_max_concurrent,
        "predict_max_bytes": predict_max_bytes,
        "containers": containers,
        "power_root": power_root,
        "log_level": log_level,
    }
    try:
        settings = config_load(
            file=config, env=os.environ, flags={k: v for k, v in flags.items() if v is not None}
        )
    except EdgeFleetError as exc:
        typer.echo(f"edge-agent: {exc}", err=True)
        raise typer.Exit(2) from None
    json_env = os.environ.get("EDGEFLEET_LOG_JSON", "")
    logs.setup(settings.log_level, json_lines={"1": True, "0": False}.get(json_env))
    context = _Context(device=settings.device.device_id, fleet=settings.device.fleet)
    for handler in logging.getLogger().handlers:
        handler.addFilter(context)
    code = _serve(settings)
    if code:
        raise typer.Exit(code)


@app.command()
def enroll(
    *,
    controller: Annotated[
        str,
        typer.Option(
            envvar="EDGEFLEET_AGENT_CONTROLLER",
            help="HOST:PORT of the controller's enrollment listener (edge-controller "
            "--enroll-listen; with --insecure: its plaintext device listener).",
        ),
    ],
    ca_file: Annotated[
        Path | None,
        typer.Option(
            help="The fleet CA certificate (the controller's DATA_DIR/ca/ca.pem, or its "
            "--ca-cert), handed over with the token: the controller must prove a certificate "
            "from it before the token is sent. Required unless --insecure.",
        ),
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            help="Send the token in plaintext to a controller run with --insecure (a warning "
            "says so); anyone on the path can read it.",
        ),
    ] = False,
    token_file: Annotated[
        Path | None,
        typer.Option(
            help="File holding the one-time token from `edgectl device enroll` "
            "(or set EDGE_AGENT_ENROLL_TOKEN; never on the command line)."
        ),
    ] = None,
    data_dir: Annotated[
        Path,
        typer.Option(envvar="EDGEFLEET_AGENT_DATA_DIR", help="The agent's data dir."),
    ] = Path("/var/lib/edgefleet"),
) -> None:
    """Enroll this device: make its key here, get its certificate for a token.

    Writes DATA_DIR/identity/: device.key (0600), device.crt (0600), ca.pem.
    Nothing else in the data dir changes, so a device whose certificate
    lapsed enrolls again with a new token and keeps its models. The running
    agent renews the certificate by itself (run --controller HOST:PORT).
    """
    from edgefleet.agent.enrolling import TOKEN_ENV
    from edgefleet.agent.enrolling import enroll as enroll_device
    from edgefleet.agent.identity import IdentityFiles

    logs.setup("WARNING", json_lines=False)
    try:
        token = token_file.read_text().strip() if token_file else os.environ.get(TOKEN_ENV, "")
    except OSError as exc:
        typer.echo(f"edge-agent: cannot read the token: {exc}", err=True)
        raise typer.Exit(2) from None
    if not token:
        typer.echo(f"edge-agent: give --token-file FILE or set {TOKEN_ENV}", err=True)
        raise typer.Exit(2)
    if (ca_file is None) == (not insecure):
        typer.echo(
            "edge-agent: give --ca-file FILE (the fleet CA, to check the controller) or "
            "--insecure (plaintext), not both and not neither",
            err=True,
        )
        raise typer.Exit(2)
    if insecure:
        log.warning("--insecure: the enrollment token goes to %s in plaintext", controller)
    try:
        ca_pem = ca_file.read_bytes() if ca_file is not None else None
        ident = enroll_device(
            controller, token, files=IdentityFiles.in_data_dir(data_dir), ca_pem=ca_pem
        )
    except (EdgeFleetError, OSError) as exc:
        typer.echo(f"edge-agent: enrollment failed: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(
        f"enrolled: device={ident.device_id} fleet={ident.fleet} "
        f"certificate={ident.serial:x} valid until {ident.not_after:%Y-%m-%d %H:%M:%S} UTC "
        f"({data_dir / 'identity'})"
    )


def _serve(settings: AgentSettings) -> int:
    from edgefleet.agent.daemon import Agent

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        agent = Agent(settings)
        endpoints = agent.start()
    except (EdgeFleetError, OSError) as exc:
        log.error("cannot start: %s", exc)
        typer.echo(f"edge-agent: {exc}", err=True)
        return 2
    typer.echo(
        f"edge-agent ready: device={agent.device_id} predict={endpoints.predict} "
        f"socket={endpoints.socket or 'off'} "
        f"metrics={endpoints.metrics_port if endpoints.metrics_port is not None else 'off'}"
    )
    sys.stdout.flush()
    while not stop.wait(1.0):
        pass
    agent.stop()
    return 0


def main() -> None:
    app()
