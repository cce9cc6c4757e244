"""``edge-agent run``: parse settings, run the agent until SIGTERM/SIGINT, exit 0.

Every config-file key is also a flag (and an ``EDGEFLEET_AGENT_*`` variable); flags win. A
bad setting exits 2 with one line saying what to fix; no business logic lives here.

The command line is the standard library's ``argparse``, not typer as ``edgectl`` is: typer
brings rich and pydantic, which a device's environment (``pip install edgefleet``) does not
install.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from edgefleet.agent.config import AgentSettings
from edgefleet.agent.config import load as config_load
from edgefleet.common import logs
from edgefleet.common.errors import EdgeFleetError

log = logging.getLogger("edgefleet.agent")

DEFAULT_DATA_DIR = Path("/var/lib/edgefleet")
ENROLL_DOC = """Enroll this device: make its key here, get its certificate for a token.

Writes DATA_DIR/identity/: device.key (0600), device.crt (0600), ca.pem.
Nothing else in the data dir changes, so a device whose certificate
lapsed enrolls again with a new token and keeps its models. The running
agent renews the certificate by itself (run --controller HOST:PORT)."""

# ``edge-agent run``'s flags: (flag, kind, type, help). kind: "value" (one value), "append"
# (repeatable), "flag" (on when given), "bool2" (--x / --no-x); unset flags leave the config
# file's, the environment's or the default value. The flag's setting is its name, - as _.
RUN_FLAGS: tuple[tuple[str, str, Callable[[str], Any], str], ...] = (
    ("--config", "value", Path, "TOML config file (same keys as the flags)."),
    ("--device-id", "value", str, "Unique device id (a-z 0-9 . _ -)."),
    ("--fleet", "value", str, "Fleet of the device."),
    (
        "--mqtt",
        "value",
        str,
        "Broker URL, mqtt://host:port; a clustered broker's nodes comma-separated (reconnects"
        " go to the next in turn).",
    ),
    ("--mqtt-ca", "value", Path, "CA bundle of an mqtts:// broker (default: enrolled)."),
    (
        "--mqtt-cert",
        "value",
        Path,
        "Client certificate for mqtts:// (default: the enrolled identity's).",
    ),
    ("--mqtt-key", "value", Path, "Its private key (default: the enrolled identity's)."),
    (
        "--mqtt-password-file",
        "value",
        Path,
        "File with the broker password for the URL's user (never in argv).",
    ),
    (
        "--mqtt-keepalive",
        "value",
        int,
        "MQTT keepalive seconds: a silent link is dead after 1.5x (default 30).",
    ),
    (
        "--controller",
        "value",
        str,
        "HOST:PORT of the controller's ArtifactService (fallback source).",
    ),
    ("--data-dir", "value", Path, "State, blobs and install slots."),
    ("--predict-listen", "value", str, "HOST:PORT for Predict (port 0: any free port)."),
    (
        "--predict-socket",
        "value",
        str,
        "Unix socket for local apps' Predict, with shared-memory inputs (default "
        "DATA_DIR/predict.sock, mode 0660; relative: under --data-dir; '' to disable).",
    ),
    (
        "--predict-fast-socket",
        "value",
        str,
        "Unix socket of the fast local path: Predict without gRPC (length-prefixed "
        "PredictRequest/PredictResponse frames, edgefleet.common.fastpath; shared-memory "
        "inputs too: memfd regions a connection registers once, at most 8 and 1 GiB per "
        "connection, or passes per request; FailoverClient uses it when local). Default "
        "DATA_DIR/predict.fast.sock, mode 0660; relative: under --data-dir; '' to disable.",
    ),
    (
        "--peer-listen",
        "value",
        str,
        "HOST:PORT of the mTLS listener neighbours forward Predict to (enrolled agents; a "
        "client certificate of this fleet on the signed roster is required; default: "
        "--predict-listen's host, any free port; advertised to the fleet).",
    ),
    (
        "--insecure",
        "flag",
        bool,
        "Plaintext gRPC to the controller and neighbours (a warning at start). Without it the "
        "agent must be enrolled (`edge-agent enroll`: mTLS) and refuses to start otherwise.",
    ),
    (
        "--insecure-mqtt",
        "flag",
        bool,
        "Let an enrolled agent use a plaintext mqtt:// broker (gRPC stays mTLS; a warning at "
        "start). Without it (or --insecure) an enrolled agent refuses an mqtt:// broker: use "
        "mqtts://, its enrolled certificate is the client certificate.",
    ),
    ("--metrics-port", "value", int, "Prometheus /metrics port (0: any free port, -1: off)."),
    ("--trusted-key", "append", Path, "PEM public key to trust (repeatable; at least one)."),
    ("--label", "append", str, "KEY=VALUE label (repeatable)."),
    ("--telemetry-interval", "value", float, "Seconds between telemetry reports (default 10)."),
    (
        "--outbox-max",
        "value",
        int,
        "Events and telemetry kept while the broker is out of reach (default 10000; beyond it"
        " the oldest are dropped and counted).",
    ),
    ("--fetch-deadline", "value", float, "Seconds one download attempt may take (default 300)."),
    (
        "--fetch-stall",
        "value",
        float,
        "Seconds without a byte after which a download is cut and resumed (default 30).",
    ),
    ("--predict-workers", "value", int, "gRPC serving threads (default 8)."),
    (
        "--failover",
        "bool2",
        bool,
        "Forward a Predict this agent cannot serve to a neighbour (default on).",
    ),
    ("--failover-deadline", "value", float, "Seconds one forwarded Predict may take (default 2)."),
    (
        "--failover-require-roster",
        "bool2",
        bool,
        "Forward only to neighbours the controller's signed fleet roster lists, even before "
        "the first roster arrives (default: enforced once one is held).",
    ),
    (
        "--predict-max-concurrent",
        "value",
        int,
        "Predict calls served at once; beyond: RESOURCE_EXHAUSTED (default 16).",
    ),
    (
        "--predict-max-bytes",
        "value",
        int,
        "Largest Predict request/reply in bytes (default 16 MiB).",
    ),
    (
        "--containers",
        "bool2",
        bool,
        "Run container releases where the local Docker answers at start (default on; off: in-"
        "process releases only, Docker is never asked).",
    ),
    (
        "--power-root",
        "value",
        Path,
        "Root of the /sys and /proc trees power sensors are read from.",
    ),
    ("--log-level", "value", str, "DEBUG, INFO, WARNING or ERROR."),
)


class _Context(logging.Filter):
    """Every record of this process is about one device: say which (JSON lines show it)."""

    def __init__(self, *, device: str, fleet: str) -> None:
        super().__init__()
        self._device, self._fleet = device, fleet

    def filter(self, record: logging.LogRecord) -> bool:
        record.device = self._device
        record.fleet = self._fleet
        return True


def parser(env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The ``edge-agent`` command line (``env``: where ``enroll``'s defaults are read)."""
    env = os.environ if env is None else env
    top = argparse.ArgumentParser(prog="edge-agent", description="EdgeFleet device agent.")
    commands = top.add_subparsers(dest="command", metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="Run the agent until SIGTERM or SIGINT.",
        description="Run the agent until SIGTERM or SIGINT.",
    )
    for flag, kind, kind_type, flag_help in RUN_FLAGS:
        text = flag_help.replace("%", "%%")
        if kind == "flag":
            run.add_argument(flag, action="store_const", const=True, default=None, help=text)
        elif kind == "bool2":
            run.add_argument(flag, action=argparse.BooleanOptionalAction, help=text)
        elif kind == "append":
            run.add_argument(
                flag, action="append", type=kind_type, metavar=_metavar(kind_type), help=text
            )
        else:
            run.add_argument(flag, type=kind_type, metavar=_metavar(kind_type), help=text)
    enroll = commands.add_parser(
        "enroll",
        help=ENROLL_DOC.splitlines()[0],
        description=ENROLL_DOC,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    controller = env.get("EDGEFLEET_AGENT_CONTROLLER")
    enroll.add_argument(
        "--controller",
        metavar="HOST:PORT",
        default=controller,
        required=controller is None,
        help="HOST:PORT of the controller's enrollment listener (edge-controller "
        "--enroll-listen; with --insecure: its plaintext device listener) "
        "[env: EDGEFLEET_AGENT_CONTROLLER].",
    )
    enroll.add_argument(
        "--ca-file",
        type=Path,
        metavar="PATH",
        help="The fleet CA certificate (the controller's DATA_DIR/ca/ca.pem, or its "
        "--ca-cert), handed over with the token: the controller must prove a certificate "
        "from it before the token is sent. Required unless --insecure.",
    )
    enroll.add_argument(
        "--insecure",
        action="store_true",
        help="Send the token in plaintext to a controller run with --insecure (a warning "
        "says so); anyone on the path can read it.",
    )
    enroll.add_argument(
        "--token-file",
        type=Path,
        metavar="PATH",
        help="File holding the one-time token from `edgectl device enroll` "
        "(or set EDGE_AGENT_ENROLL_TOKEN; never on the command line).",
    )
    enroll.add_argument(
        "--data-dir",
        type=Path,
        metavar="PATH",
        default=Path(env.get("EDGEFLEET_AGENT_DATA_DIR") or DEFAULT_DATA_DIR),
        help=f"The agent's data dir [env: EDGEFLEET_AGENT_DATA_DIR; default: {DEFAULT_DATA_DIR}].",
    )
    return top


def _metavar(kind_type: Callable[[str], Any]) -> str:
    names: dict[Callable[[str], Any], str] = {Path: "PATH", int: "INTEGER", float: "FLOAT"}
    return names.get(kind_type, "TEXT")


def cli(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Run ``edge-agent`` with ``argv`` (default: this process's) and return its exit status;
    ``env`` stands for the environment (default: this process's). Usage errors exit 2."""
    env = os.environ if env is None else env
    args = parser(env).parse_args(argv)
    if args.command == "run":
        return run(args, env)
    if args.command == "enroll":
        return enroll(args, env)
    parser(env).print_help(sys.stderr)
    return 2


def run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """``edge-agent run``: the settings from the file, the environment and the flags."""
    flags: dict[str, Any] = {
        flag[2:].replace("-", "_"): getattr(args, flag[2:].replace("-", "_"))
        for flag, *_ in RUN_FLAGS
        if flag not in ("--config", "--trusted-key", "--label")
    }
    flags["trusted_keys"] = args.trusted_key or None
    flags["labels"] = args.label or None
    try:
        settings = config_load(
            file=args.config, env=env, flags={k: v for k, v in flags.items() if v is not None}
        )
    except EdgeFleetError as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return 2
    json_env = env.get("EDGEFLEET_LOG_JSON", "")
    logs.setup(settings.log_level, json_lines={"1": True, "0": False}.get(json_env))
    context = _Context(device=settings.device.device_id, fleet=settings.device.fleet)
    for handler in logging.getLogger().handlers:
        handler.addFilter(context)
    if not settings.insecure and not _enrolled(settings):
        print(
            f"edge-agent: not enrolled (no certificate in {settings.data_dir / 'identity'}): "
            "run `edge-agent enroll --controller HOST:PORT --ca-file CA.pem --token-file FILE` "
            "first (mTLS), or pass --insecure for plaintext gRPC",
            file=sys.stderr,
        )
        return 2
    refused = _plaintext_broker(settings)
    if refused:
        print(f"edge-agent: {refused}", file=sys.stderr)
        return 2
    return _serve(settings)


def _plaintext_broker(settings: AgentSettings) -> str:
    """Why an enrolled agent (not ``--insecure``) must not start on a plaintext ``mqtt://``
    broker ("" when it may: TLS, ``--insecure``, unenrolled, or ``--insecure-mqtt``, warned)."""
    from edgefleet.common.mqttclient import parse_urls

    brokers = parse_urls(settings.mqtt.url)
    if settings.insecure or all(b.tls for b in brokers) or not _enrolled(settings):
        return ""
    shown = ",".join(b.redacted() for b in brokers)
    if settings.mqtt.allow_plaintext:
        log.warning(
            "plaintext broker %s (--insecure-mqtt): MQTT (desired states, presence, "
            "inference) is neither encrypted nor mutually authenticated",
            shown,
        )
        return ""
    return (
        f"enrolled, but the broker {shown} is plaintext: refused; use mqtts:// (the enrolled "
        "certificate is the client certificate; --mqtt-ca if the broker's CA is not the "
        "fleet's), or pass --insecure-mqtt (plaintext MQTT) or --insecure (all plaintext)"
    )


def _enrolled(settings: AgentSettings) -> bool:
    """Whether the data dir holds a device identity (``edge-agent enroll`` made it)."""
    from edgefleet.agent.identity import IdentityFiles

    return IdentityFiles.in_data_dir(settings.data_dir).exists()


def enroll(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """``edge-agent enroll`` (``ENROLL_DOC``)."""
    from edgefleet.agent.enrolling import TOKEN_ENV
    from edgefleet.agent.enrolling import enroll as enroll_device
    from edgefleet.agent.identity import IdentityFiles

    token_file: Path | None = args.token_file
    ca_file: Path | None = args.ca_file
    data_dir: Path = args.data_dir
    logs.setup("WARNING", json_lines=False)
    try:
        token = token_file.read_text().strip() if token_file else env.get(TOKEN_ENV, "")
    except OSError as exc:
        print(f"edge-agent: cannot read the token: {exc}", file=sys.stderr)
        return 2
    if not token:
        print(f"edge-agent: give --token-file FILE or set {TOKEN_ENV}", file=sys.stderr)
        return 2
    if (ca_file is None) == (not args.insecure):
        print(
            "edge-agent: give --ca-file FILE (the fleet CA, to check the controller) or "
            "--insecure (plaintext), not both and not neither",
            file=sys.stderr,
        )
        return 2
    if args.insecure:
        log.warning("--insecure: the enrollment token goes to %s in plaintext", args.controller)
    try:
        ca_pem = ca_file.read_bytes() if ca_file is not None else None
        ident = enroll_device(
            args.controller, token, files=IdentityFiles.in_data_dir(data_dir), ca_pem=ca_pem
        )
    except (EdgeFleetError, OSError) as exc:
        print(f"edge-agent: enrollment failed: {exc}", file=sys.stderr)
        return 1
    print(
        f"enrolled: device={ident.device_id} fleet={ident.fleet} "
        f"certificate={ident.serial:x} valid until {ident.not_after:%Y-%m-%d %H:%M:%S} UTC "
        f"({data_dir / 'identity'})"
    )
    return 0


NO_RUNTIME = (
    "ONNX Runtime is not installed: pip install 'edgefleet[cpu]' (onnxruntime), or the "
    "device's own wheel (a Jetson: JetPack's onnxruntime-gpu; README: Installing the agent "
    "on a device)"
)


def _serve(settings: AgentSettings) -> int:
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None:  # not a dependency: its flavour varies
        print(f"edge-agent: {NO_RUNTIME}", file=sys.stderr)
        return 2
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
        print(f"edge-agent: {exc}", file=sys.stderr)
        return 2
    print(
        f"edge-agent ready: device={agent.device_id} predict={endpoints.predict} "
        f"socket={endpoints.socket or 'off'} fast_socket={endpoints.fast_socket or 'off'} "
        f"metrics={endpoints.metrics_port if endpoints.metrics_port is not None else 'off'}"
    )
    sys.stdout.flush()
    while not stop.wait(1.0):
        pass
    agent.stop()
    return 0


def main() -> None:
    sys.exit(cli())
