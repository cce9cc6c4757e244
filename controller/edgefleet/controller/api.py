"""Controller records <-> ``controller.proto`` messages (the operator API's wire form)."""

from __future__ import annotations

from edgefleet.common import types as t
from edgefleet.common import wire
from edgefleet.controller.records import DeviceView, ModelVersion, Release, Rollout, SigningKey
from edgefleet.controller.registry import Upload
from edgefleet.v1 import controller_pb2


def key_info(k: SigningKey) -> controller_pb2.KeyInfo:
    return controller_pb2.KeyInfo(
        key_id=k.key_id,
        public_key_pem=k.public_key_pem,
        created_at_ms=k.created_at_ms,
        active=k.active,
        created=k.created,
    )


def upload_header(msg: controller_pb2.UploadHeader) -> Upload:
    return Upload(name=msg.name, declared_size=msg.size, description=msg.description)


def registered_model(m: ModelVersion) -> controller_pb2.RegisteredModel:
    return controller_pb2.RegisteredModel(
        name=m.name,
        version=m.version,
        digest=m.digest,
        size=m.size,
        inputs=[wire.spec_to_pb(s) for s in m.inputs],
        outputs=[wire.spec_to_pb(s) for s in m.outputs],
        created_at_ms=m.created_at_ms,
        description=m.description,
        opset=m.opset,
    )


def health(msg: controller_pb2.CreateReleaseRequest) -> t.HealthPolicy | None:
    """The request's health policy; unset = the defaults, a zero crash-loop limit = the default."""
    if not msg.HasField("health"):
        return None
    given = wire.health_from_pb(msg.health)
    if given.max_load_failures == 0:
        given = t.HealthPolicy(
            smoke_inference=given.smoke_inference,
            latency_budget_ms=given.latency_budget_ms,
            max_load_failures=t.HealthPolicy().max_load_failures,
            health_window_s=given.health_window_s,
        )
    return given


def release_info(r: Release) -> controller_pb2.ReleaseInfo:
    return controller_pb2.ReleaseInfo(
        name=r.ref.name,
        version=r.ref.version,
        manifest_digest=r.manifest_digest,
        key_id=r.key_id,
        manifest=wire.manifest_to_pb(r.manifest),
        created_at_ms=r.created_at_ms,
        signed_manifest=wire.envelope_to_pb(r.signed_manifest),
    )


def deploy_response(r: Rollout) -> controller_pb2.DeployResponse:
    return controller_pb2.DeployResponse(
        rollout_id=r.rollout_id,
        targets=[
            controller_pb2.DeployTarget(device_id=x.device_id, generation=x.generation)
            for x in r.targets
        ],
    )


def device_info(d: DeviceView) -> controller_pb2.DeviceInfo:
    msg = controller_pb2.DeviceInfo(
        device_id=d.device_id,
        fleet=d.fleet,
        labels=dict(d.labels),
        phase=wire.phase_to_pb(d.phase),
        active_release=d.active_release,
        previous_release=d.previous_release,
        target_release=d.desired_release or d.target_release,
        generation_applied=d.generation_applied,
        generation_desired=d.generation_desired,
        last_error=d.last_error,
        online=d.online,
        predict_endpoint=d.predict_endpoint,
        last_seen_ms=d.last_seen_ms,
    )
    if d.telemetry is not None:
        msg.telemetry.CopyFrom(wire.telemetry_to_pb(d.telemetry))
    return msg
