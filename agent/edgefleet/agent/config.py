"""Agent settings: nested frozen dataclasses, loaded once from a TOML file, env, then flags.

Each flat key works in all three places: ``device_id = "a1"`` in the file,
``EDGEFLEET_AGENT_DEVICE_ID=a1`` in the environment, ``--device-id a1`` on the command line;
a later source wins. Lists (``trusted_keys``) are replaced by a later source, ``labels`` are
merged key by key. Relative paths in the file are relative to the file. An enrolled device
(``edge-agent enroll``) takes its id and fleet from its certificate.
"""

from __future__ import annotations

import logging
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from edgefleet.agent.identity import IdentityFiles
from edgefleet.common import wire
from edgefleet.common.errors import InvalidInputError, MalformedMessageError
from edgefleet.common.mqttclient import parse_urls, with_password_file
from edgefleet.common.types import validate_name

ENV_PREFIX = "EDGEFLEET_AGENT_"


@dataclass(frozen=True)
class DeviceSettings:
    device_id: str = ""
    """Unique id of this device: its MQTT client id and topic segment (a-z 0-9 . _ -)."""
    fleet: str = "default"
    """The fleet the device belongs to; its neighbours are the fleet's other devices."""
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """Free-form labels reported to the controller (site, camera, ...)."""


@dataclass(frozen=True)
class MqttSettings:
    url: str = "mqtt://127.0.0.1:1883"
    """Broker URL: mqtt://[user:password@]host:port, or mqtts:// for TLS; the nodes of a
    clustered broker comma-separated (the agent fails over to the next one in turn)."""
    ca_file: Path | None = None
    """CA bundle of an mqtts:// broker; None = the enrolled identity's ca.pem, else the system's."""
    cert_file: Path | None = None
    """Client certificate for mqtts://; None = the enrolled identity's (edge-agent enroll)."""
    key_file: Path | None = None
    """Its private key; None = the enrolled identity's."""
    password_file: Path | None = None
    """File holding the broker password for the URL's user (e.g. systemd ``LoadCredential``),
    so that no password is on the command line or in the config file."""
    keepalive_s: int = 30
    """MQTT keepalive: a link that carries nothing for 1.5 times this long is taken for dead
    (the agent reconnects, the broker publishes its offline will)."""
    allow_plaintext: bool = False
    """An enrolled agent (not ``insecure``) accepts a plaintext ``mqtt://`` broker
    (``--insecure-mqtt``, a warning at start); without it ``edge-agent run`` refuses one."""


@dataclass(frozen=True)
class FetchSettings:
    controller: str = ""
    """HOST:PORT of the controller's ArtifactService, tried after the desired state's sources."""
    deadline_s: float = 300.0
    """Deadline of one download attempt; a cut download resumes where it stopped."""
    stall_s: float = 30.0
    """A download that brings no byte for this long is cut and resumed (a silent link)."""


DEFAULT_PREDICT_SOCKET = "predict.sock"
DEFAULT_FAST_SOCKET = "predict.fast.sock"  # edgefleet.common.fastpath.DEFAULT_FAST_SOCKET
UNIX_PATH_MAX = 107
"""Longest Unix socket path Linux binds (``sun_path`` less its NUL)."""


@dataclass(frozen=True)
class ServingSettings:
    predict_listen: str = "127.0.0.1:0"
    """HOST:PORT Predict binds (port 0: any free port; the bound address is advertised)."""
    predict_socket: str = DEFAULT_PREDICT_SOCKET
    """Unix socket for local apps' Predict (and shared-memory inputs); relative to the data
    dir, "" for none."""
    predict_fast_socket: str = DEFAULT_FAST_SOCKET
    """Unix socket of the fast local path (Predict without gRPC, ``common.fastpath``; shared
    memory too); relative to the data dir, "" for none."""
    peer_listen: str = ""
    """HOST:PORT of the mTLS Predict listener for neighbours (enrolled agents only; "": the
    Predict listener's host, any free port)."""
    metrics_port: int = 0
    """Port of the Prometheus /metrics endpoint (0: any free port, -1: off)."""
    workers: int = 8
    """Threads serving gRPC requests."""
    failover: bool = True
    """Forward a Predict this agent cannot serve to a healthy neighbour of its fleet."""
    failover_deadline_s: float = 2.0
    """Deadline of one forwarded Predict; the next neighbour is tried after it."""
    failover_require_roster: bool = False
    """Forward only once a signed fleet roster is held (without: presence alone until the
    first roster arrives; once one is held it is always enforced)."""
    max_concurrent: int = 16
    """Predict calls served at once; one more is answered RESOURCE_EXHAUSTED."""
    max_message_bytes: int = 16 << 20
    """Largest Predict request or reply in bytes; a larger one is answered RESOURCE_EXHAUSTED."""


@dataclass(frozen=True)
class AgentSettings:
    device: DeviceSettings = field(default_factory=DeviceSettings)
    """Who this device is."""
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    """Where the controller's desired states arrive and reports go."""
    fetch: FetchSettings = field(default_factory=FetchSettings)
    """Where model blobs come from."""
    serving: ServingSettings = field(default_factory=ServingSettings)
    """The Predict and metrics endpoints."""
    trusted_keys: tuple[Path, ...] = ()
    """PEM files of the public keys whose signatures the agent accepts (at least one)."""
    data_dir: Path = Path("/var/lib/edgefleet")
    """State, blobs, partial downloads and install slots."""
    telemetry_interval: float = 10.0
    """Seconds between telemetry reports."""
    outbox_max: int = 10_000
    """Events and telemetry the persisted outbox holds while the broker is out of reach;
    beyond it the oldest are dropped (counted in ``edgefleet_outbox_dropped_total``)."""
    insecure: bool = False
    """Plaintext gRPC to the controller and neighbours even when enrolled (a warning at start).
    ``edge-agent run`` refuses an unenrolled agent without it; in-process (``Agent``) an
    unenrolled agent is plaintext regardless."""
    containers: bool = True
    """Run container releases where the local dockerd answers at start (off: in-process
    releases only; Docker is never asked and ``container`` is not among the runtimes)."""
    power_root: Path = Path("/")
    """Where ``/sys`` and ``/proc`` of the power sensors are found (a fixture tree in tests)."""
    log_level: str = "INFO"
    """DEBUG, INFO, WARNING or ERROR."""


def _labels(value: Any) -> dict[str, str]:
    if isinstance(value, Mapping):
        items = [(str(k), str(v)) for k, v in value.items()]
    else:
        parts = value.split(",") if isinstance(value, str) else list(value)
        items = []
        for part in (str(p).strip() for p in parts):
            if not part:
                continue
            k, sep, v = part.partition("=")
            if not sep or not k.strip():
                raise InvalidInputError(f"label must be KEY=VALUE, got {part!r}")
            items.append((k.strip(), v.strip()))
    return dict(items)


def _paths(value: Any) -> tuple[Path, ...]:
    parts = value.split(os.pathsep) if isinstance(value, str) else list(value)
    return tuple(Path(str(p)) for p in parts if str(p))


def _float(value: Any) -> float:
    return float(value)


def _int(value: Any) -> int:
    return int(value)


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {value!r}")


# flat key -> (section or "" for top level, field, converter)
KEYS: dict[str, tuple[str, str, Callable[[Any], Any]]] = {
    "device_id": ("device", "device_id", str),
    "fleet": ("device", "fleet", str),
    "labels": ("device", "labels", _labels),
    "mqtt": ("mqtt", "url", str),
    "mqtt_ca": ("mqtt", "ca_file", lambda v: Path(str(v))),
    "mqtt_cert": ("mqtt", "cert_file", lambda v: Path(str(v))),
    "mqtt_key": ("mqtt", "key_file", lambda v: Path(str(v))),
    "mqtt_password_file": ("mqtt", "password_file", lambda v: Path(str(v))),
    "mqtt_keepalive": ("mqtt", "keepalive_s", _int),
    "insecure_mqtt": ("mqtt", "allow_plaintext", _bool),
    "controller": ("fetch", "controller", str),
    "fetch_deadline": ("fetch", "deadline_s", _float),
    "fetch_stall": ("fetch", "stall_s", _float),
    "predict_listen": ("serving", "predict_listen", str),
    "predict_socket": ("serving", "predict_socket", str),
    "predict_fast_socket": ("serving", "predict_fast_socket", str),
    "peer_listen": ("serving", "peer_listen", str),
    "metrics_port": ("serving", "metrics_port", _int),
    "predict_workers": ("serving", "workers", _int),
    "failover": ("serving", "failover", _bool),
    "failover_deadline": ("serving", "failover_deadline_s", _float),
    "failover_require_roster": ("serving", "failover_require_roster", _bool),
    "predict_max_concurrent": ("serving", "max_concurrent", _int),
    "predict_max_bytes": ("serving", "max_message_bytes", _int),
    "trusted_keys": ("", "trusted_keys", _paths),
    "data_dir": ("", "data_dir", lambda v: Path(str(v))),
    "telemetry_interval": ("", "telemetry_interval", _float),
    "outbox_max": ("", "outbox_max", _int),
    "insecure": ("", "insecure", _bool),
    "containers": ("", "containers", _bool),
    "power_root": ("", "power_root", lambda v: Path(str(v))),
    "log_level": ("", "log_level", lambda v: str(v).upper()),
}
ALIASES = {"trusted_key": "trusted_keys", "label": "labels"}


def _convert(source: str, raw: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        flat = ALIASES.get(key, key)
        if flat not in KEYS:
            raise InvalidInputError(f"{source}: unknown setting {key!r}; known: {sorted(KEYS)}")
        try:
            out[flat] = KEYS[flat][2](value)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"{source}: bad value for {key}: {value!r}") from exc
    return out


def from_file(path: Path) -> dict[str, Any]:
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidInputError(f"no such config file: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInputError(f"{path}: not valid TOML ({exc})") from None
    values = _convert(str(path), raw)
    base = path.parent
    for key in ("data_dir", "power_root", "mqtt_ca", "mqtt_cert", "mqtt_key", "mqtt_password_file"):
        if key in values:
            values[key] = base / values[key]
    if "trusted_keys" in values:
        values["trusted_keys"] = tuple(base / p for p in values["trusted_keys"])
    return values


def from_env(env: Mapping[str, str]) -> dict[str, Any]:
    raw = {
        k.removeprefix(ENV_PREFIX).lower(): v
        for k, v in env.items()
        if k.startswith(ENV_PREFIX) and v != ""
    }
    return _convert("environment", raw)


def _from_identity(flat: dict[str, Any]) -> None:
    """An enrolled device's id and fleet are its certificate's: taken from it when not given,
    refused when given otherwise (the registry, not the device, decides its fleet)."""
    files = IdentityFiles.in_data_dir(Path(flat.get("data_dir", AgentSettings.data_dir)))
    if not files.cert.is_file():
        return
    ident = files.identity()
    for key, theirs in (("device_id", ident.device_id), ("fleet", ident.fleet)):
        ours = flat.setdefault(key, theirs)
        if ours != theirs:
            raise InvalidInputError(
                f"{key} {ours!r} disagrees with this device's certificate ({theirs!r}, "
                f"{files.cert}); drop the setting, or enroll the device again"
            )


def merge(*layers: Mapping[str, Any]) -> AgentSettings:
    """Build settings from flat layers, later ones winning; then validate."""
    flat: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if value is None:
                continue
            merged = {**flat["labels"], **value} if key == "labels" and "labels" in flat else value
            flat[key] = merged
    _from_identity(flat)
    sections: dict[str, dict[str, Any]] = {"device": {}, "mqtt": {}, "fetch": {}, "serving": {}}
    top: dict[str, Any] = {}
    for key, value in flat.items():
        section, name, _ = KEYS[key]
        frozen = MappingProxyType(dict(value)) if name == "labels" else value
        (sections[section] if section else top)[name] = frozen
    settings = AgentSettings(
        device=DeviceSettings(**sections["device"]),
        mqtt=MqttSettings(**sections["mqtt"]),
        fetch=FetchSettings(**sections["fetch"]),
        serving=ServingSettings(**sections["serving"]),
        **top,
    )
    validate(settings)
    return settings


def load(*, file: Path | None, env: Mapping[str, str], flags: Mapping[str, Any]) -> AgentSettings:
    return merge(from_file(file) if file else {}, from_env(env), _convert("flags", flags))


def broker_url(s: MqttSettings) -> str:
    """The broker URL to connect with: ``url``, with the password from ``password_file``
    (in every node's URL, when it lists several)."""
    return s.url if s.password_file is None else with_password_file(s.url, s.password_file)


def _check_password_file(s: MqttSettings) -> None:
    brokers = parse_urls(s.url)
    if s.password_file is None:
        return
    if not all(b.username for b in brokers):
        raise InvalidInputError("--mqtt-password-file needs a user in the URL: mqtt://USER@HOST")
    if any(b.password for b in brokers):
        raise InvalidInputError("give the MQTT password in the URL or in a file, not both")
    if not s.password_file.is_file():
        raise InvalidInputError(f"MQTT password file not found: {s.password_file}")


def _host_port(what: str, value: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise InvalidInputError(f"{what} must be HOST:PORT, got {value!r}")


def _check_device(s: DeviceSettings) -> None:
    if not s.device_id:
        raise InvalidInputError("a device id is required (--device-id or device_id)")
    validate_name("device", s.device_id)
    validate_name("fleet", s.fleet)
    try:  # what the controller would refuse in every status: say so at start instead
        wire.check_labels(s.labels)
    except MalformedMessageError as exc:
        raise InvalidInputError(f"labels: {exc}") from None


def predict_socket_path(s: AgentSettings) -> Path | None:
    """Where the Predict Unix socket goes (absolute), or None when it is off."""
    if not s.serving.predict_socket:
        return None
    return (s.data_dir / s.serving.predict_socket).absolute()


def predict_fast_socket_path(s: AgentSettings) -> Path | None:
    """Where the fast local path's Unix socket goes (absolute), or None when it is off."""
    if not s.serving.predict_fast_socket:
        return None
    return (s.data_dir / s.serving.predict_fast_socket).absolute()


def _check_socket_paths(s: AgentSettings) -> None:
    """A given socket path too long for a Unix socket is refused (the defaults: warned and
    skipped at start)."""
    for flag, path, value, default in (
        ("--predict-socket", predict_socket_path(s), s.serving.predict_socket,
         DEFAULT_PREDICT_SOCKET),
        ("--predict-fast-socket", predict_fast_socket_path(s), s.serving.predict_fast_socket,
         DEFAULT_FAST_SOCKET),
    ):  # fmt: skip
        if path is not None and len(str(path).encode()) > UNIX_PATH_MAX and value != default:
            raise InvalidInputError(
                f"{flag} {path}: longer than the {UNIX_PATH_MAX} bytes a Unix socket path may have"
            )
    if s.serving.predict_socket and predict_socket_path(s) == predict_fast_socket_path(s):
        raise InvalidInputError(
            "--predict-socket and --predict-fast-socket name the same path: give them two"
        )


def _check_listeners(s: ServingSettings) -> None:
    _host_port("--predict-listen", s.predict_listen)
    if s.peer_listen:
        _host_port("--peer-listen", s.peer_listen)


def validate(s: AgentSettings) -> None:
    _check_device(s.device)
    _check_password_file(s.mqtt)
    if not s.trusted_keys:
        raise InvalidInputError(
            "refusing to start without a trusted key: give --trusted-key FILE (the controller's "
            "public key, PEM); the agent applies only desired states signed by a trusted key"
        )
    for path in s.trusted_keys:
        if not path.is_file():
            raise InvalidInputError(f"trusted key file not found: {path}")
    _check_listeners(s.serving)
    _check_socket_paths(s)
    if s.fetch.controller:
        _host_port("--controller", s.fetch.controller)
    if s.serving.metrics_port < -1 or s.serving.metrics_port > 65535:
        raise InvalidInputError(f"--metrics-port must be -1..65535, got {s.serving.metrics_port}")
    if s.telemetry_interval <= 0:
        raise InvalidInputError("--telemetry-interval must be positive")
    if s.fetch.stall_s <= 0 or s.mqtt.keepalive_s < 1 or s.outbox_max < 1:
        raise InvalidInputError(
            "--fetch-stall must be positive, --mqtt-keepalive and --outbox-max at least 1"
        )
    if s.fetch.deadline_s <= 0 or s.serving.workers < 1:
        raise InvalidInputError("--fetch-deadline and --predict-workers must be positive")
    if s.serving.max_concurrent < 1:
        raise InvalidInputError("--predict-max-concurrent must be positive")
    if not 4096 <= s.serving.max_message_bytes <= 2**31 - 1:
        raise InvalidInputError(
            f"--predict-max-bytes must be 4096..2147483647, got {s.serving.max_message_bytes}"
        )
    if s.log_level not in logging.getLevelNamesMapping():
        raise InvalidInputError(f"unknown log level {s.log_level!r}")
