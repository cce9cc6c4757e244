"""``edge-controller run``: parse flags into ``Settings``, start the controller, wait for a signal.

Every ``run`` flag is also an ``EDGEFLEET_CONTROLLER_*`` variable (``--mqtt`` ->
``EDGEFLEET_CONTROLLER_MQTT``, ``--db`` -> ``EDGEFLEET_CONTROLLER_DB``) and a key of the TOML
file ``--config`` names (``mqtt = "..."``): the flags' own table, as click reads it (a flag
wins over the environment, which wins over the file). Secrets never need the command line: the
broker and database passwords come from ``--mqtt-password-file`` / ``--db-password-file``, the
environment or the config file.

SIGTERM or SIGINT stops it gracefully (calls in flight finish) and the process exits 0.
``edge-controller migrate`` upgrades the database's schema (Alembic; ``run`` does it at start).
``edge-controller operator add|list|revoke`` manage operators straight on the data dir's database
(for a lost admin token; over the API, admins use ``edgectl operator``).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from edgefleet.common import logs, oci
from edgefleet.common.errors import EdgeFleetError
from edgefleet.common.mqttclient import with_password_file
from edgefleet.controller.config import (
    ApiSettings,
    GrpcSettings,
    IngestSettings,
    MetricsSettings,
    MqttSettings,
    PkiSettings,
    RolloutSettings,
    SandboxSettings,
    Settings,
    split_address,
    with_db_password_file,
)
from edgefleet.controller.db import Database
from edgefleet.controller.operators import OperatorStore, Role, write_token

log = logging.getLogger(__name__)

ENV_PREFIX = "EDGEFLEET_CONTROLLER"

app = typer.Typer(
    help="EdgeFleet controller: model registry, releases, devices and rollouts.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """EdgeFleet controller."""


def _read_config(ctx: typer.Context, path: Path | None) -> Path | None:
    """``--config FILE``: ``run``'s settings from a TOML file, a key per flag (``mqtt``,
    ``mqtt_password_file``; ``-`` or ``_``), as defaults that the environment and the flags
    override. Eager, so that it is read before the other options take their values."""
    if path is None:
        return None
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc}") from None
    given = {key.replace("-", "_"): value for key, value in data.items()}
    unknown = sorted(set(given) - {p.name for p in ctx.command.params} - {"config"})
    if unknown:
        raise typer.BadParameter(f"{path}: no such setting: {', '.join(unknown)}")
    ctx.default_map = {**(ctx.default_map or {}), **given}
    return path


@app.command(context_settings={"auto_envvar_prefix": ENV_PREFIX})
def run(
    *,
    config: Annotated[
        Path | None,
        typer.Option(
            help='TOML file of these settings, one key a flag (mqtt = "mqtts://...", '
            "mqtt_password_file, db, ...); the environment and flags win over it. Keep it 0600 "
            "when it holds a password.",
            callback=_read_config,
            is_eager=True,
        ),
    ] = None,
    data_dir: Annotated[
        Path, typer.Option(help="Keys, blobs, the SQLite database and controller.json.")
    ] = Path("edgefleet-data"),
    grpc: Annotated[
        str,
        typer.Option(
            help="HOST:PORT devices reach: ArtifactService (blobs), certificate renewal and "
            "health (mTLS: a device certificate of the fleet CA required; with --insecure: "
            "plaintext, enrollment too)."
        ),
    ] = "127.0.0.1:50051",
    tls: Annotated[
        bool,
        typer.Option(
            "--tls/--insecure",
            help="--tls (the default): the devices' port is mTLS (only enrolled, unrevoked "
            "devices fetch), enrollment is TLS on --enroll-listen, and a plaintext mqtt:// "
            "broker is refused (see --insecure-mqtt). --insecure: all of it plaintext, "
            "with a warning at start (for tests and trials only).",
            show_default=False,
        ),
    ] = True,
    enroll_listen: Annotated[
        str,
        typer.Option(
            help="HOST:PORT where devices without a certificate enroll with a token (TLS with "
            "the controller's certificate, no client certificate asked; none with --insecure)."
        ),
    ] = "127.0.0.1:50053",
    api: Annotated[
        str,
        typer.Option(
            help="HOST:PORT of the operator API (ControllerService, for edgectl; bearer tokens "
            "required). Keep it off the device network."
        ),
    ] = "127.0.0.1:50052",
    mqtt: Annotated[
        str,
        typer.Option(
            help="MQTT broker URL; a clustered broker's nodes comma-separated (reconnects go "
            "to the next in turn). With --tls it must be mqtts:// (with --mqtt-cert, "
            "--mqtt-key, --mqtt-ca: edge-controller broker-config makes them); the mqtt:// "
            "default needs --insecure-mqtt or --insecure."
        ),
    ] = "mqtt://127.0.0.1:1883",
    insecure_mqtt: Annotated[
        bool,
        typer.Option(
            "--insecure-mqtt",
            help="Accept a plaintext mqtt:// broker with --tls (gRPC stays mTLS; a warning at "
            "every start): MQTT is then readable and forgeable on the wire. Without it, --tls "
            "with an mqtt:// broker refuses to start.",
        ),
    ] = False,
    db: Annotated[
        str, typer.Option(help="SQLAlchemy URL (default: sqlite:///DATA_DIR/controller.db).")
    ] = "",
    db_password_file: Annotated[
        Path | None,
        typer.Option(
            help="File with the password of --db's user (postgresql://USER@HOST/DB), so that "
            "it is never on the command line (or set EDGEFLEET_CONTROLLER_DB)."
        ),
    ] = None,
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
    peer_sources: Annotated[
        int,
        typer.Option(
            min=0,
            help="Desired states name up to this many enrolled, online devices of the fleet "
            "(same `site` label when the device has one) that already hold the release as "
            "sources before this controller: peer-to-peer downloads over their mTLS peer "
            "listeners, every byte checked against the signed digest (0: none).",
        ),
    ] = 3,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve Prometheus /metrics on this port.")
    ] = None,
    metrics_host: Annotated[str, typer.Option(help="Address /metrics listens on.")] = "127.0.0.1",
    mqtt_client_id: Annotated[
        str,
        typer.Option(
            help="MQTT client id, one per controller. Default: the --mqtt-cert's identity (its "
            "CN, which an mTLS broker makes the client id; another is refused), else "
            "edgefleet-controller.",
            show_default=False,
        ),
    ] = "",
    mqtt_ca: Annotated[
        Path | None, typer.Option(help="CA bundle of an mqtts:// broker (default: system).")
    ] = None,
    mqtt_cert: Annotated[
        Path | None,
        typer.Option(help="Client certificate for an mTLS broker (broker-config makes one)."),
    ] = None,
    mqtt_key: Annotated[Path | None, typer.Option(help="Its private key (PEM, 0600).")] = None,
    mqtt_password_file: Annotated[
        Path | None,
        typer.Option(
            help="File with the broker password of --mqtt's user (mqtts://USER@HOST:PORT, put "
            "into every node's URL), so that it is never on the command line (or set "
            "EDGEFLEET_CONTROLLER_MQTT)."
        ),
    ] = None,
    enrolled_only: Annotated[
        bool | None,
        typer.Option(
            "--enrolled-only/--any-device",
            help="Hear only devices the registry knows (edgectl device enroll): reports of any "
            "other device id are dropped and counted, so nothing on the broker can register a "
            "device. Default: on with an mTLS broker (--mqtt-cert), off otherwise.",
            show_default=False,
        ),
    ] = None,
    ca_cert: Annotated[
        Path | None,
        typer.Option(help="Your own fleet CA certificate (default: DATA_DIR/ca, made once)."),
    ] = None,
    ca_key: Annotated[Path | None, typer.Option(help="Its private key (EC, PEM).")] = None,
    cert_lifetime: Annotated[
        float, typer.Option(help="Days a device certificate is valid (renewed at 2/3).", min=0)
    ] = 30.0,
    broker_dir: Annotated[
        Path | None,
        typer.Option(
            help="A broker-config --out dir: rewrite its crl.pem and edgefleet.acl whenever "
            "devices are enrolled, revoked or removed (then SIGHUP Mosquitto)."
        ),
    ] = None,
    sandbox_memory: Annotated[
        int,
        typer.Option(
            help="MiB of address space a process running a user's model (inspection, golden "
            "outputs, compression) may use; 0: no limit.",
            min=0,
        ),
    ] = 4096,
    sandbox_cpu: Annotated[
        int, typer.Option(help="CPU seconds one model inspection or golden run may use.", min=0)
    ] = 600,
    sandbox_timeout: Annotated[
        float, typer.Option(help="Seconds before an inspection or golden run is killed.", min=0)
    ] = 600.0,
    search_timeout: Annotated[
        float, typer.Option(help="CPU and wall-clock seconds of one compression search.", min=0)
    ] = 7200.0,
    sandbox_processes: Annotated[
        int, typer.Option(help="Sandbox processes at a time; more calls wait a turn.", min=1)
    ] = 4,
    rollout_tick: Annotated[
        float, typer.Option(help="Seconds between two looks at every unfinished rollout.", min=0.01)
    ] = 1.0,
    resend_after: Annotated[
        float,
        typer.Option(
            help="Seconds a device may lag its desired generation before it is sent it again "
            "(every desired state is also re-published on each broker reconnect).",
            min=0.1,
        ),
    ] = 15.0,
    desired_ttl: Annotated[
        float,
        typer.Option(
            help="Days a desired state stays valid after it is sealed (agents refuse it later; "
            "re-published ones are re-sealed). Also how long a rotated-out signing key stays "
            "trusted for new messages.",
            min=0.0001,
        ),
    ] = 30.0,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
) -> None:
    """Run the controller until SIGTERM or SIGINT.

    Every flag is also an EDGEFLEET_CONTROLLER_* variable (--mqtt:
    EDGEFLEET_CONTROLLER_MQTT, --db-password-file:
    EDGEFLEET_CONTROLLER_DB_PASSWORD_FILE) and a key of the --config TOML
    file; a flag wins over the environment, the environment over the file.
    Passwords: in a file (--mqtt-password-file, --db-password-file, --config)
    or the environment, never on the command line.
    """
    from edgefleet.controller.server import Controller

    if log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise typer.BadParameter(f"unknown log level {log_level!r}", param_hint="--log-level")
    json_env = os.environ.get("EDGEFLEET_LOG_JSON")
    logs.setup(log_level, json_lines=None if json_env is None else json_env == "1")
    try:
        split_address(grpc)
        split_address(api)
        split_address(enroll_listen)
        if advertise:
            split_address(advertise)
        sources = tuple(artifact_source or ())
        for source in sources:
            if oci.is_source(source):
                oci.RegistryRef.from_source(source)
            else:
                split_address(source)
        client_id = _mqtt_client_id(mqtt_client_id, mqtt_cert)
        if mqtt_password_file is not None:
            mqtt = with_password_file(mqtt, mqtt_password_file)
        if db_password_file is not None:
            db = with_db_password_file(db, db_password_file)
    except EdgeFleetError as exc:
        raise typer.BadParameter(str(exc)) from exc
    settings = Settings(
        data_dir=data_dir,
        db_url=db,
        grpc=GrpcSettings(
            bind=grpc,
            advertise=advertise,
            extra_sources=sources,
            peer_sources=peer_sources,
            tls=tls,
            enroll_bind=enroll_listen,
        ),
        api=ApiSettings(bind=api),
        mqtt=MqttSettings(
            url=mqtt,
            client_id=client_id,
            ca_file=str(mqtt_ca) if mqtt_ca else None,
            cert_file=str(mqtt_cert) if mqtt_cert else None,
            key_file=str(mqtt_key) if mqtt_key else None,
            allow_plaintext=insecure_mqtt,
        ),
        ingest=IngestSettings(
            enrolled_only=mqtt_cert is not None if enrolled_only is None else enrolled_only
        ),
        pki=PkiSettings(
            ca_cert=ca_cert,
            ca_key=ca_key,
            cert_lifetime_s=cert_lifetime * 86400,
            broker_dir=broker_dir,
        ),
        metrics=MetricsSettings(port=metrics_port, host=metrics_host),
        sandbox=SandboxSettings(
            memory_bytes=sandbox_memory << 20,
            cpu_s=sandbox_cpu,
            timeout_s=sandbox_timeout,
            search_s=search_timeout,
            processes=sandbox_processes,
        ),
        rollouts=RolloutSettings(
            tick_s=rollout_tick, resend_after_s=resend_after, desired_ttl_s=desired_ttl * 86400
        ),
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


operator_app = typer.Typer(
    help="Operators of the API and their tokens, on this controller's database (local).",
    no_args_is_help=True,
)
app.add_typer(operator_app, name="operator")

DataDir = Annotated[Path, typer.Option(help="The controller's data dir (its database is there).")]
DbUrl = Annotated[
    str,
    typer.Option(
        envvar=f"{ENV_PREFIX}_DB",
        help="SQLAlchemy URL (default: sqlite:///DATA_DIR/controller.db; a password in it: "
        "set EDGEFLEET_CONTROLLER_DB rather than the flag).",
    ),
]


def _operator_store(data_dir: Path, db: str) -> OperatorStore:
    settings = Settings(data_dir=data_dir, db_url=db)
    if not db and not (data_dir / "controller.db").is_file():
        raise typer.BadParameter(f"no controller database in {data_dir}", param_hint="--data-dir")
    database = Database(settings.database_url)
    database.create_schema()
    return OperatorStore(database, clock=lambda: time.time_ns() // 1_000_000)


@operator_app.command("add")
def operator_add(
    name: Annotated[str, typer.Argument(help="Operator name (a-z 0-9 . _ -).")],
    *,
    role: Annotated[str, typer.Option(help="viewer, releaser, deployer or admin.")],
    fleet: Annotated[
        list[str] | None, typer.Option(help="Limit the operator to this fleet (repeatable).")
    ] = None,
    token_file: Annotated[
        Path | None, typer.Option(help="Write the token to this file (0600), not to stdout.")
    ] = None,
    data_dir: DataDir = Path("edgefleet-data"),
    db: DbUrl = "",
) -> None:
    """Make an operator and print its token, once (the controller keeps only its hash)."""
    try:
        store = _operator_store(data_dir, db)
        made, token = store.add(name, Role.parse(role), fleets=fleet or ())
    except EdgeFleetError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    scope = ",".join(made.fleets) or "all fleets"
    if token_file is not None:
        write_token(token_file, token)
        typer.echo(f"operator {made.name} ({made.role}, {scope}); token in {token_file}")
    else:
        typer.echo(f"operator {made.name} ({made.role}, {scope}); its token, shown once:", err=True)
        typer.echo(token)


@operator_app.command("list")
def operator_list(data_dir: DataDir = Path("edgefleet-data"), db: DbUrl = "") -> None:
    """List operators: name, role, fleets, whether revoked."""
    for o in _operator_store(data_dir, db).list_operators():
        state = "revoked" if o.revoked_at_ms is not None else "active"
        typer.echo(f"{o.name}\t{o.role}\t{','.join(o.fleets) or '*'}\t{state}")


@operator_app.command("revoke")
def operator_revoke(
    name: Annotated[str, typer.Argument(help="Operator to revoke.")],
    data_dir: DataDir = Path("edgefleet-data"),
    db: DbUrl = "",
) -> None:
    """Revoke an operator's token; its next call is refused (UNAUTHENTICATED)."""
    try:
        _operator_store(data_dir, db).revoke(name)
    except EdgeFleetError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"operator {name} revoked")


def _mqtt_client_id(given: str, cert: Path | None) -> str:
    """The client id: the certificate's CN where there is one (an mTLS broker from broker-config
    makes it the client id whatever is asked, so another would only hide which one it is)."""
    if cert is None:
        return given or "edgefleet-controller"
    from edgefleet.common import identities
    from edgefleet.common.errors import InvalidInputError

    try:
        pem = cert.read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"--mqtt-cert {cert}: {exc.strerror or exc}") from None
    identity = identities.identity_of(identities.load_cert(pem)).device_id
    if given and given != identity:
        raise InvalidInputError(
            f"--mqtt-client-id {given!r} is not the identity of --mqtt-cert ({identity!r}), "
            "which the broker makes the client id: leave it out, or give each replica a "
            "certificate of its own (broker-config --controllers N)"
        )
    return identity


@app.command("broker-config")
def broker_config(
    *,
    out: Annotated[Path, typer.Option(help="Directory to write the broker's files to.")],
    data_dir: DataDir = Path("edgefleet-data"),
    db: DbUrl = "",
    host: Annotated[
        list[str] | None,
        typer.Option(help="DNS name or IP devices dial the broker by (repeatable)."),
    ] = None,
    port: Annotated[int, typer.Option(help="The mTLS listener's port.")] = 8883,
    bind: Annotated[str, typer.Option(help="Address the listener binds (default: all).")] = "",
    install_dir: Annotated[
        Path | None,
        typer.Option(help="Where the files will live on the broker host (default: --out)."),
    ] = None,
    days: Annotated[int, typer.Option(help="Days the broker's certificates are valid.")] = 365,
    controllers: Annotated[
        int | None,
        typer.Option(
            help="Controller replicas on this broker, one certificate (one identity, one client "
            "id) each: 1 makes DATA_DIR/ca/controller.crt (CN edgefleet-controller); N > 1 "
            "makes controller-0.crt .. controller-{N-1}.crt (CN edgefleet-controller@0 ..), "
            "each with the controller's ACL rights. Default: as many as OUT has, else 1.",
            min=1,
            show_default=False,
        ),
    ] = None,
    ca_cert: Annotated[Path | None, typer.Option(help="Your own CA (as for run).")] = None,
    ca_key: Annotated[Path | None, typer.Option(help="Its private key.")] = None,
) -> None:
    """Write Mosquitto's mTLS files: certs, CA, CRL, per-device ACL, config.

    Also makes the controller's own client certificate, DATA_DIR/ca/
    controller.crt and .key, for run --mqtt mqtts://... --mqtt-cert ...
    --mqtt-key ... --mqtt-ca OUT/ca.pem (--controllers N: one per replica,
    controller-0.crt ..; replicas sharing one knock each other off the
    broker). Run it again after enrolling, revoking or removing devices:
    SIGHUP rereads the ACL, a restart the CRL.
    """
    from edgefleet.controller import brokerconfig
    from edgefleet.controller.enrollment import open_enrollment

    settings = Settings(data_dir=data_dir, db_url=db)
    try:
        database = Database(settings.database_url)
        database.create_schema()
        pki = PkiSettings(ca_cert=ca_cert, ca_key=ca_key)
        enrollment = open_enrollment(database, pki, ca_dir=settings.ca_dir, clock=time.time)
        files = brokerconfig.write(
            enrollment,
            out,
            controller_dir=settings.ca_dir,
            hosts=host or brokerconfig.default_hosts(),
            port=port,
            bind=bind,
            install_dir=install_dir,
            days=days,
            controllers=controllers,
            now=datetime.now(tz=UTC),
        )
    except EdgeFleetError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"broker files in {files.directory} (include mosquitto.conf from there)")
    for c in files.controllers:
        who = "controller" if len(files.controllers) == 1 else c.identity
        typer.echo(f"{who}: --mqtt-cert {c.cert} --mqtt-key {c.key}")


@app.command()
def migrate(data_dir: DataDir = Path("edgefleet-data"), db: DbUrl = "") -> None:
    """Upgrade the controller's database to this version's schema, keeping its data.

    `run` does the same at every start; run this on its own to upgrade before
    starting several controllers on one PostgreSQL, or to see what it does.
    """
    from edgefleet.controller import migrating

    settings = Settings(data_dir=data_dir, db_url=db)
    if not db:
        data_dir.mkdir(parents=True, exist_ok=True)
    logs.setup("INFO")
    database = Database(settings.database_url)
    try:
        with database.engine.connect() as conn:
            before = migrating.current(conn)
        after = migrating.upgrade(database)
    except Exception as exc:  # a database error: one line, no traceback
        typer.echo(f"error: migration failed: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        database.dispose()
    if before == after:
        typer.echo(f"schema at {after} (newest); nothing to do")
    else:
        typer.echo(f"schema migrated from {before or 'nothing'} to {after}")


def main() -> None:
    app()
