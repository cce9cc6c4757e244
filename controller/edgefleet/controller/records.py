"""What the controller keeps, as frozen dataclasses: the stores return these, the gRPC layer
converts them (``api``), and the pure rollout code reads them. No SQL or protobuf here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from edgefleet.common import types as t
from edgefleet.common.signing import Envelope
from edgefleet.controller.rollouts import engine

ROLLBACK = "rollback"
"""The kind of a fleet rollback's rollout record (the others are ``strategy.Kind`` values)."""


@dataclass(frozen=True)
class SigningKey:
    key_id: str
    public_key_pem: str
    created_at_ms: int
    active: bool
    created: bool = False  # True only in the answer to the InitKey that made it
    retired_at_ms: int = 0  # when a rotation replaced it
    revoked_at_ms: int = 0  # when it was revoked (0: trusted)
    trusted_until_ms: int = 0  # end of its overlap window in the trust bundle (0: open)


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    digest: str
    size: int
    inputs: tuple[t.TensorSpec, ...]
    outputs: tuple[t.TensorSpec, ...]
    opset: int
    created_at_ms: int
    description: str = ""
    parent_version: int = 0  # the version this one was compressed from; 0 = none
    report_json_digest: str = ""  # blobs of a compressed version; "" = none
    report_markdown_digest: str = ""
    golden_digest: str = ""
    transfer_digest: str = ""  # the packed container a device downloads; "" = the model itself
    transfer_size: int = 0

    @property
    def compressed(self) -> bool:
        return bool(self.report_json_digest)


@dataclass(frozen=True)
class CompressionArtifacts:
    """What a release of a compressed model version carries besides the model's manifest data.

    ``transfer`` is what devices download in place of the model (the packed container, encoding
    ``efpk``), or None when they download the model itself.
    """

    report_json: str
    golden_npz: bytes | None
    transfer: bytes | None
    transfer_digest: str = ""
    golden_digest: str = ""

    @property
    def model_encoding(self) -> str:
        return "efpk" if self.transfer is not None else ""


@dataclass(frozen=True)
class Release:
    ref: t.ReleaseRef
    manifest: t.Manifest
    signed_manifest: Envelope
    manifest_digest: str
    created_at_ms: int
    notes: str = ""

    @property
    def key_id(self) -> str:
        return self.signed_manifest.key_id


@dataclass(frozen=True)
class DeviceView:
    """One device as ListDevices shows it: last status, presence, telemetry and desired state."""

    device_id: str
    fleet: str
    labels: Mapping[str, str] = field(default_factory=dict)
    phase: t.InstallPhase | None = None
    active_release: str = ""
    previous_release: str = ""
    target_release: str = ""
    generation_applied: int = 0
    generation_desired: int = 0
    desired_release: str = ""
    last_error: str = ""
    online: bool = False
    predict_endpoint: str = ""
    last_seen_ms: int = 0
    telemetry: t.Telemetry | None = None
    telemetry_received_ms: int = 0  # by the controller's clock, whatever the device's says
    container: t.ContainerStatus | None = None  # the active release's, as last reported
    hardware: t.Hardware | None = None  # as the device's agent probed it at start
    active_provider: str = ""  # the execution provider its active release runs on
    provider_fallback: str = ""  # why not the release's first preference ("": it is)
    active_variant: str = ""  # the active release's model variant it runs ("": the default)


@dataclass(frozen=True)
class DeployTarget:
    device_id: str
    generation: int


@dataclass(frozen=True)
class RolloutRecord:
    """A rollout as stored: the engine's state plus what only the shell knows."""

    rollout: engine.Rollout
    kind: str  # all-at-once | canary | rollback
    created_at_ms: int
    updated_at_ms: int

    @property
    def id(self) -> str:
        return self.rollout.id


@dataclass(frozen=True)
class RolloutPage:
    """A rollout as GetRollout shows it: its first targets only, every target counted."""

    record: RolloutRecord  # its rollout's targets: the first ``device_limit``, by device id
    counts: Mapping[str, int]  # every target, by state
    total: int  # targets in all
    steps: tuple[int, ...]  # cumulative device counts per step, over all targets


@dataclass(frozen=True)
class Started:
    """What a deploy or a fleet rollback did at once."""

    rollout_id: str
    targets: tuple[DeployTarget, ...]  # desired states sent in the first step
    skipped: tuple[str, ...] = ()  # rollback: devices with no release to go back to
