"""Controller records <-> ``controller.proto`` messages (the operator API's wire form)."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

from edgefleet.common import enumwords, rolloutwords, wire
from edgefleet.common import types as t
from edgefleet.common.errors import InvalidInputError
from edgefleet.controller import compressing
from edgefleet.controller.compress.metric_hook import MetricModule
from edgefleet.controller.compress.searching import CandidateRecord
from edgefleet.controller.devices.rows import DeviceView
from edgefleet.controller.keys import SigningKey
from edgefleet.controller.registry import ModelVersion, Upload
from edgefleet.controller.releases import Release, VariantSpec
from edgefleet.controller.rollouts import strategy as rollout_strategy
from edgefleet.controller.rollouts.history import Transition
from edgefleet.controller.rollouts.rows import ROLLBACK, RolloutRecord
from edgefleet.controller.rollouts.shell import Started
from edgefleet.controller.rollouts.store import RolloutPage
from edgefleet.controller.rollouts.strategy import Strategy
from edgefleet.v1 import common_pb2, controller_pb2


def key_info(k: SigningKey) -> controller_pb2.KeyInfo:
    return controller_pb2.KeyInfo(
        key_id=k.key_id,
        public_key_pem=k.public_key_pem,
        created_at_ms=k.created_at_ms,
        active=k.active,
        created=k.created,
        retired_at_ms=k.retired_at_ms,
        revoked_at_ms=k.revoked_at_ms,
        trusted_until_ms=k.trusted_until_ms,
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
        parent_version=m.parent_version,
        compressed=m.compressed,
        transfer_size=m.transfer_size,
    )


def health(msg: controller_pb2.CreateReleaseRequest) -> t.HealthPolicy | None:
    """The request's health policy; unset = the defaults, a zero crash-loop limit = the default."""
    if not msg.HasField("health"):
        return None
    given = wire.health_from_pb(msg.health)  # zero golden tolerances become their defaults
    if given.max_load_failures == 0:
        given = dataclasses.replace(given, max_load_failures=t.HealthPolicy().max_load_failures)
    return given


def providers(msg: controller_pb2.CreateReleaseRequest) -> tuple[t.ExecutionProvider, ...]:
    """The request's execution provider preference, in its order (checked by ``releases``)."""
    return tuple(t.ExecutionProvider(p.name, dict(p.options)) for p in msg.providers)


def variants(msg: controller_pb2.CreateReleaseRequest) -> tuple[VariantSpec, ...]:
    """The request's model variants, in their order (checked by ``releases``)."""
    return tuple(
        VariantSpec(
            name=v.name,
            model=v.model,
            model_version=v.model_version,
            requires=tuple(v.requires),
            providers=tuple(t.ExecutionProvider(p.name, dict(p.options)) for p in v.providers),
        )
        for v in msg.variants
    )


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


def deploy_response(r: Started) -> controller_pb2.DeployResponse:
    return controller_pb2.DeployResponse(
        rollout_id=r.rollout_id,
        targets=[
            controller_pb2.DeployTarget(device_id=x.device_id, generation=x.generation)
            for x in r.targets
        ],
    )


def strategy(msg: controller_pb2.DeployRequest) -> Strategy:
    """The request's strategy, parsed and checked (``InvalidInputError``); unset = all at once.
    An empty or zero field takes the default ``strategy.parse`` gives it."""
    if not msg.HasField("strategy"):
        return rollout_strategy.parse()
    s = msg.strategy
    kind = rolloutwords.kind_word(s.strategy_kind)
    if s.strategy_kind and not kind:
        raise InvalidInputError(f"--strategy: unknown strategy kind {s.strategy_kind}")
    # every field but the kind is one of parse's keywords, by the same name
    given: dict[str, Any] = {"kind": kind} | {
        f.name: getattr(s, f.name) for f in s.DESCRIPTOR.fields if f.name != "strategy_kind"
    }
    return rollout_strategy.parse(**{k: v for k, v in given.items() if v})


def strategy_to_pb(kind: str, s: Strategy) -> controller_pb2.RolloutStrategy:
    """``kind``: the rollout record's (a ``Kind`` word, or ``rollback``)."""
    return controller_pb2.RolloutStrategy(
        strategy_kind=rolloutwords.kind_value(kind),
        canary=str(s.canary) if s.canary is not None else "",
        waves=",".join(str(w) for w in s.waves),
        max_parallel=s.max_parallel,
        bake=f"{s.bake_s:g}s",
        device_timeout=f"{s.device_timeout_s:g}s",
        max_failures=str(s.max_failures),
        max_latency_ratio=s.max_latency_ratio,
        max_error_rate=s.max_error_rate,
    )


def rollout_info(
    rec: RolloutRecord, history: Sequence[Transition] = ()
) -> controller_pb2.RolloutInfo:
    """The rollout's wire form: its devices in device id order, counted by state."""
    r = rec.rollout
    return controller_pb2.RolloutInfo(
        rollout_id=r.id,
        fleet=r.fleet,
        release=r.release,
        rollout_phase=rolloutwords.phase_value(r.phase),
        step=r.step,
        step_sizes=[] if rec.kind == ROLLBACK else list(r.steps),
        strategy=strategy_to_pb(rec.kind, r.strategy),
        reason=r.reason,
        created_at_ms=rec.created_at_ms,
        updated_at_ms=rec.updated_at_ms,
        devices=[
            controller_pb2.RolloutDevice(
                device_id=x.device_id,
                target_state=rolloutwords.target_state_value(x.state),
                generation=x.generation,
                previous_release=x.previous_release,
                reason=x.reason,
                sent_at_ms=int(x.sent_at * 1000),
            )
            for x in r.targets
        ],
        device_counts=Counter(x.state.value for x in r.targets),
        devices_total=len(r.targets),
        history=[
            controller_pb2.RolloutTransition(
                at_ms=h.at_ms,
                kind=h.kind.value,
                device_id=h.device_id,
                old=h.old,
                new=h.new,
                message=h.message,
            )
            for h in history
        ],
    )


def rollout_page_info(
    page: RolloutPage, history: Sequence[Transition] = ()
) -> controller_pb2.RolloutInfo:
    """GetRollout's answer: the page's devices, every device counted, steps over them all."""
    msg = rollout_info(page.record, history)
    if page.record.kind != ROLLBACK:
        msg.step_sizes[:] = list(page.steps)
    msg.device_counts.clear()
    msg.device_counts.update(page.counts)
    msg.devices_total = page.total
    return msg


_PAGE_KIND = "devices/1"


def page_token(after: tuple[str, str] | None, *, fleet: str) -> str:
    """The opaque ``next_page_token`` of a device listing that goes on after ``after``
    ((fleet, device id); None: no more pages, "")."""
    if after is None:
        return ""
    raw = json.dumps([_PAGE_KIND, fleet, *after], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def page_after(token: str, *, fleet: str) -> tuple[str, str] | None:
    """The (fleet, device id) a ``page_token`` goes on after (None for ""); a token this
    server did not issue, or one issued for another fleet, is ``InvalidInputError``."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        kind, of, after_fleet, after_device = json.loads(raw)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise InvalidInputError(f"page_token {token[:40]!r} is not one this server gave") from exc
    if kind != _PAGE_KIND or not all(isinstance(x, str) for x in (of, after_fleet, after_device)):
        raise InvalidInputError(f"page_token {token[:40]!r} is not one this server gave")
    if of != fleet:
        raise InvalidInputError(f"page_token is for fleet {of!r}, not {fleet!r}")
    return after_fleet, after_device


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
    if d.container is not None:
        msg.container.CopyFrom(wire.container_to_pb(d.container))
    if d.hardware is not None:
        msg.hardware.CopyFrom(wire.hardware_to_pb(d.hardware))
    msg.active_provider = d.active_provider
    msg.provider_fallback = d.provider_fallback
    msg.active_variant = d.active_variant
    return msg


# --- compression -------------------------------------------------------------------------


def compress_job(msg: controller_pb2.CompressRequest) -> compressing.Job:
    """The request as the compressor reads it; an objective this build does not know (a
    newer client's) is ``InvalidInputError``, never the default."""
    objective = enumwords.objective_word(msg.search_objective)
    if msg.search_objective and not objective:
        choices = ", ".join(enumwords.objective_words())
        raise InvalidInputError(
            f"unknown objective {msg.search_objective}: choose one of {choices}"
        )
    return compressing.Job(
        name=msg.name,
        version=msg.version,
        recipe=msg.recipe or "auto",
        eval_data=msg.eval_data,
        max_drop=(
            msg.max_accuracy_drop
            if msg.HasField("max_accuracy_drop")
            else compressing.DEFAULT_MAX_DROP
        ),
        objective=objective,
        profile_on=msg.profile_on,
        time_budget_s=msg.time_budget_s if msg.HasField("time_budget_s") else None,
        metric=msg.metric,
        metric_module=(
            MetricModule(
                msg.metric_module_source,
                msg.metric_module_function or "score",
                msg.metric_module_origin or "<metric-module>",
            )
            if msg.metric_module_source
            else None
        ),
        golden=msg.golden,
        cores=msg.cores,
        carry=tuple(msg.carry),
        variants=msg.variants,
    )


def compress_variant(v: compressing.RegisteredVariant) -> controller_pb2.CompressVariant:
    return controller_pb2.CompressVariant(
        name=v.name,
        candidate=v.candidate,
        requires=list(v.requires),
        providers=[common_pb2.ExecutionProvider(name=p) for p in v.providers],
        model=registered_model(v.model),
    )


def compress_candidate(c: CandidateRecord) -> controller_pb2.CompressCandidate:
    steps = [{"technique": str(s.technique), **s.params} for s in c.steps]
    msg = controller_pb2.CompressCandidate(
        candidate=c.name,
        techniques=list(c.techniques),
        parameters_json=json.dumps(steps, default=str),
        size_bytes=c.size_bytes,
        transfer_bytes=c.transfer_bytes,
        p50_ms=c.p50_ms,
        metric=c.metric,
        value=c.value,
        drop=c.drop,
        passed_gate=c.passed_gate,
        verdict=c.verdict,
        seconds=c.seconds,
        outputs=[
            controller_pb2.CompressOutputScore(
                output=o.output, metric=o.metric, value=o.value, drop=o.drop
            )
            for o in c.outputs
        ],
    )
    # speed_ratio*: 0 when not timed against the original (the original itself, skipped ones)
    if (one := c.speed_ratio) is not None:
        msg.speed_ratio, msg.speed_ratio_low, msg.speed_ratio_high = one.ratio, one.low, one.high
        msg.speed_rounds = one.rounds
    if (nt := c.speed_ratio_nt) is not None:
        msg.speed_ratio_nt, msg.speed_ratio_nt_low, msg.speed_ratio_nt_high = (
            nt.ratio,
            nt.low,
            nt.high,
        )
        msg.speed_rounds_nt, msg.speed_threads_nt = nt.rounds, nt.threads
    return msg


def compress_progress(event: compressing.Event) -> controller_pb2.CompressProgress:
    if isinstance(event, compressing.Outcome):
        r = event.result
        total = len(r.candidates)
        result = controller_pb2.CompressResult(
            passed=event.model is not None,
            winner=r.winner.name if r.winner is not None else "",
            report_json=event.report_json,
            report_markdown=event.report_markdown,
            candidates=[compress_candidate(c) for c in r.candidates],
            original=compress_candidate(r.original),
        )
        if event.model is not None:
            result.model.CopyFrom(registered_model(event.model))
        if event.variant_default is not None:
            result.variant_default.CopyFrom(compress_variant(event.variant_default))
        result.variants.extend(compress_variant(v) for v in event.variants)
        result.variant_notes.extend(event.variant_notes)
        return controller_pb2.CompressProgress(done=total, total=total, result=result)
    if event.candidate is not None:
        return controller_pb2.CompressProgress(
            done=event.done,
            total=event.total,
            candidate=compress_candidate(event.candidate),
            elapsed_s=event.elapsed_s,
            remaining_s=event.remaining_s,
        )
    return controller_pb2.CompressProgress(
        done=event.done,
        total=event.total,
        message=event.message,
        elapsed_s=event.elapsed_s,
        remaining_s=event.remaining_s,
    )
