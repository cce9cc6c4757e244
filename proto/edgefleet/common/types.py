"""Domain twins of the wire messages: frozen dataclasses the pure core works with.

Nothing here imports generated protobuf code; ``edgefleet.common.wire`` converts.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from edgefleet.common.errors import InvalidInputError

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_HOST_LABEL = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")
_PORT = re.compile(r"^[0-9]{1,5}$")
# A semver 2.0.0 version, as the semver package's ``Version.is_valid`` takes it (its ``_REGEX``,
# ASCII; tests/common/test_versions.py checks the two agree): the agent validates every
# release it is sent without importing semver (about 0.9 MB of its resident set).
_PRERELEASE_ID = r"(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)"
_BUILD_ID = r"[0-9a-zA-Z-]+"
_SEMVER = re.compile(
    r"^(?:0|[1-9]\d*)\.(?:0|[1-9]\d*)\.(?:0|[1-9]\d*)"
    rf"(?:-{_PRERELEASE_ID}(?:\.{_PRERELEASE_ID})*)?"
    rf"(?:\+{_BUILD_ID}(?:\.{_BUILD_ID})*)?\Z",
    re.ASCII,
)


class InstallPhase(StrEnum):
    """Agent install state machine (DESIGN.md section 5)."""

    IDLE = "idle"
    FETCHING = "fetching"
    VERIFYING = "verifying"
    STAGED = "staged"
    HEALTH_CHECK = "health_check"
    ACTIVE = "active"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"


def validate_name(kind: str, name: str) -> str:
    """Model, fleet and device names: a-z, 0-9, ``.-_``; they end up in topics and paths."""
    if not _NAME.match(name):
        raise InvalidInputError(
            f"invalid {kind} name {name!r}: use 1-63 of a-z 0-9 . _ - "
            "starting with a letter or digit"
        )
    return name


def validate_endpoint(what: str, text: str) -> str:
    """``HOST:PORT`` where HOST is a DNS name, an IPv4 address or a ``[bracketed]`` IPv6 one.

    Endpoints come from devices (presence, status) and are dialled by neighbours and apps, so
    nothing else may pass: no scheme, no path, no spaces, a port in 1..65535.
    """
    host, sep, port = text.rpartition(":")
    ok = bool(sep and host and _PORT.match(port)) and 0 < int(port) < 65536
    if ok and host.startswith("["):
        try:
            ok = host.endswith("]") and ipaddress.ip_address(host[1:-1]).version == 6
        except ValueError:
            ok = False
    elif ok:
        labels = host.removesuffix(".").split(".")
        ok = len(host) <= 253 and all(_HOST_LABEL.match(label) for label in labels)
    if not ok:
        raise InvalidInputError(
            f"{what} must be HOST:PORT (a host name, IPv4 or [IPv6] address and a port "
            f"1-65535), got {text[:80]!r}"
        )
    return text


@dataclass(frozen=True, order=True)
class ReleaseRef:
    """``name:semver``, e.g. ``digits:1.2.0``."""

    name: str
    version: str

    @classmethod
    def parse(cls, text: str) -> ReleaseRef:
        name, sep, version = text.partition(":")
        if not sep or not name or not version:
            raise InvalidInputError(f"release must be NAME:VERSION, got {text!r}")
        return cls(validate_name("release", name), validate_version(version))

    def __str__(self) -> str:
        return f"{self.name}:{self.version}"


def validate_version(version: str) -> str:
    if not _SEMVER.match(version):
        raise InvalidInputError(f"version must be semver (MAJOR.MINOR.PATCH), got {version!r}")
    return version


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]  # -1 = dynamic

    def describe(self) -> str:
        dims = ",".join("?" if d < 0 else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"


@dataclass(frozen=True)
class HealthPolicy:
    smoke_inference: bool = True
    latency_budget_ms: float = 0.0
    max_load_failures: int = 3
    health_window_s: float = 0.0
    golden_max_abs_error: float = 1e-4
    golden_min_agreement: float = 1.0


@dataclass(frozen=True)
class ExecutionProvider:
    """One ONNX Runtime execution provider of a release's preference, with its options."""

    name: str
    """ONNX Runtime's name: "TensorrtExecutionProvider", "CUDAExecutionProvider", ..."""
    options: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Variant:
    """One model variant of a release and the hardware conditions a device needs for it."""

    name: str
    model_digest: str
    model_size: int
    model_encoding: str = ""
    providers: tuple[ExecutionProvider, ...] = ()
    requires: tuple[str, ...] = ()
    """"arch:<machine>", "cpu:<feature>", "gpu", "provider:<ONNX Runtime provider>"."""
    golden_digest: str = ""
    """Its own golden data (the release's inputs, this model's outputs); "": the release's."""
    golden_size: int = 0


@dataclass(frozen=True)
class VariantTiming:
    """One candidate of a release (variant ``variant``, "" = the default) timed on a device."""

    variant: str
    p50_ms: float
    providers: str = ""  # the providers ONNX Runtime used there


@dataclass(frozen=True)
class VariantPreference:
    """The variant measured fastest (``--profile-on``) on a device of one hardware class: arch
    ``arch`` and, of the requirements the release's variants name, exactly ``holds``."""

    arch: str
    holds: tuple[str, ...]
    variant: str  # "" = the default model
    measured_on: str = ""
    timings: tuple[VariantTiming, ...] = ()


@dataclass(frozen=True)
class Chunk:
    """One content-addressed piece of a chunked model blob."""

    digest: str
    size: int


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    model_digest: str
    model_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    runtime: str = "onnxruntime"
    health: HealthPolicy = field(default_factory=HealthPolicy)
    created_at_ms: int = 0
    model_version: int = 0
    compression_report_json: str = ""
    annotations: Mapping[str, str] = field(default_factory=dict)
    golden_digest: str = ""
    golden_size: int = 0
    model_encoding: str = ""  # "" = plain .onnx; "efpk" = packed container
    image: str = ""
    """runtime "container": the image's content digest (its config's sha256, Docker's id)."""
    providers: tuple[ExecutionProvider, ...] = ()
    """ONNX Runtime execution providers in order of preference (empty: CPU only)."""
    model_chunks: tuple[Chunk, ...] = ()
    """The model blob as content-defined chunks in order (empty: fetched whole)."""
    variants: tuple[Variant, ...] = ()
    """Models for hardware classes, in order; the top-level model is the default."""
    preferences: tuple[VariantPreference, ...] = ()
    """Per hardware class, the variant measured fastest there; before the first-fit rule."""
    variant: str = ""
    """Agent-side, never on the wire: the variant this manifest was resolved to ("": default)."""

    @property
    def ref(self) -> ReleaseRef:
        return ReleaseRef(self.name, self.version)


@dataclass(frozen=True)
class DesiredState:
    """What the controller wants one device to run. ``manifest`` is already verified."""

    device_id: str
    fleet: str
    generation: int
    release: ReleaseRef
    manifest_digest: str
    manifest: Manifest
    rollout_id: str = ""
    issued_at_ms: int = 0
    artifact_sources: tuple[str, ...] = ()


@dataclass(frozen=True)
class ContainerStatus:
    """The container serving a container release, as the agent last sampled it."""

    release: str
    container_id: str
    state: str
    """dockerd's state (created, running, restarting, exited, dead), or "missing"."""
    image: str = ""
    """The image id (``sha256:...``) the container runs."""
    restarts: int = 0
    cpu_seconds: float = 0.0
    """CPU time the container has used since it started."""
    memory_bytes: int = 0
    """Memory in use now, page cache excluded."""
    memory_limit_bytes: int = 0


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_bytes: int = 0
    """0: not known (a Jetson's GPU shares the CPU's memory)."""


@dataclass(frozen=True)
class Hardware:
    """A device's hardware as its agent probed it at start."""

    arch: str
    """``platform.machine()``: x86_64, aarch64, armv7l."""
    cpu_features: tuple[str, ...] = ()
    """Those that matter for int8/fp16 kernels: avx2, avx512, vnni, dotprod, fp16."""
    cores: int = 0
    memory_bytes: int = 0
    gpus: tuple[Gpu, ...] = ()
    providers: tuple[str, ...] = ()
    """ONNX Runtime's available execution providers, in its order."""
    board: str = ""
    """The board's model where the device tree names it (Jetson, Raspberry Pi)."""
    onnxruntime_version: str = ""


@dataclass(frozen=True)
class DeviceStatus:
    device_id: str
    fleet: str
    phase: InstallPhase
    labels: Mapping[str, str] = field(default_factory=dict)
    active_release: str = ""
    previous_release: str = ""
    target_release: str = ""
    generation_applied: int = 0
    last_error: str = ""
    predict_endpoint: str = ""
    agent_version: str = ""
    at_ms: int = 0
    active_manifest_digest: str = ""
    seq: int = 0
    """Grows with every status the device sends (0: an agent that does not count)."""
    runtimes: tuple[str, ...] = ()
    """What the device can run: "onnxruntime", and "container" where Docker answered."""
    container: ContainerStatus | None = None
    """The active release's container (None: in-process, or nothing served)."""
    hardware: Hardware | None = None
    """What the device is (None: an agent that does not say)."""
    active_provider: str = ""
    """The execution provider the active release's session runs on ("": none in-process)."""
    provider_fallback: str = ""
    """Why that is not the release's first preference ("": it is)."""
    active_variant: str = ""
    """The active release's model variant the device runs ("": the release's default)."""


@dataclass(frozen=True)
class DeviceEvent:
    device_id: str
    kind: str
    message: str = ""
    release: str = ""
    generation: int = 0
    phase: InstallPhase | None = None
    at_ms: int = 0
    seq: int = 0
    """Position in the device's outbox (0: not from an outbox)."""


@dataclass(frozen=True)
class Telemetry:
    device_id: str
    release: str
    window_s: float
    requests: int
    errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    power_w: float | None = None
    energy_per_inference_j: float | None = None
    cpu_percent: float = 0.0
    memory_bytes: int = 0
    at_ms: int = 0
    refused: int = 0
    """Predict calls refused for the caller's inputs (ORT raised, ``blame`` put it on them):
    counted in neither ``requests`` nor ``errors``, so never in the error rate."""


@dataclass(frozen=True)
class Presence:
    device_id: str
    fleet: str
    online: bool
    predict_endpoint: str = ""
    active_release: str = ""
    at_ms: int = 0
