"""Protobuf messages <-> domain dataclasses. The one place that knows both.

Decoders raise ``MalformedMessageError`` for bytes that do not parse or miss required fields,
so a bad payload from the network is one clear error, never an ``AttributeError`` deep inside.

What a device sends (status, events, telemetry, presence) is bounded here, where it enters:
counters and generations within ``0..MAX_COUNT`` (so ``generation + 1`` never overflows a
64-bit column), names per ``validate_name``, free text at most ``MAX_MESSAGE_BYTES`` and
other strings ``MAX_TEXT_BYTES`` of UTF-8, at most ``MAX_LABELS`` labels, no control
characters anywhere, endpoints ``HOST:PORT``, figures finite and not negative. The encoders
make an honest device's free text fit (control characters become spaces, long text is cut),
so only a broken or hostile device has its message refused.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from google.protobuf.message import DecodeError, Message

from edgefleet.common import digests
from edgefleet.common import types as t
from edgefleet.common.errors import InvalidInputError, MalformedMessageError
from edgefleet.common.signing import Envelope
from edgefleet.v1 import common_pb2, mqtt_pb2

M = TypeVar("M", bound=Message)

MAX_COUNT = 1 << 62
"""Largest generation, counter or timestamp a device may report."""
MAX_TEXT_BYTES = 256
"""Ids, release refs, digests, versions, endpoints, label values (UTF-8 bytes)."""
MAX_MESSAGE_BYTES = 2048
"""A status's ``last_error`` and an event's ``message`` (UTF-8 bytes)."""
MAX_LABELS = 32
"""Labels one device may report."""

# C0 and C1 controls, DEL, zero-width and bidirectional-override characters: none of them
# belongs in an id or a message, and each can disguise what an operator's terminal shows
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]")

_PHASES = {
    t.InstallPhase.IDLE: mqtt_pb2.INSTALL_PHASE_IDLE,
    t.InstallPhase.FETCHING: mqtt_pb2.INSTALL_PHASE_FETCHING,
    t.InstallPhase.VERIFYING: mqtt_pb2.INSTALL_PHASE_VERIFYING,
    t.InstallPhase.STAGED: mqtt_pb2.INSTALL_PHASE_STAGED,
    t.InstallPhase.HEALTH_CHECK: mqtt_pb2.INSTALL_PHASE_HEALTH_CHECK,
    t.InstallPhase.ACTIVE: mqtt_pb2.INSTALL_PHASE_ACTIVE,
    t.InstallPhase.FAILED: mqtt_pb2.INSTALL_PHASE_FAILED,
    t.InstallPhase.ROLLED_BACK: mqtt_pb2.INSTALL_PHASE_ROLLED_BACK,
}
_PHASES_BACK = {v: k for k, v in _PHASES.items()}


def parse(message_type: type[M], data: bytes, *, what: str = "") -> M:
    msg = message_type()
    try:
        msg.ParseFromString(data)
    except (DecodeError, ValueError) as exc:
        raise MalformedMessageError(
            f"{what or message_type.DESCRIPTOR.full_name}: not a valid protobuf payload"
        ) from exc
    return msg


def phase_to_pb(phase: t.InstallPhase | None) -> mqtt_pb2.InstallPhase.ValueType:
    return _PHASES[phase] if phase is not None else mqtt_pb2.INSTALL_PHASE_UNSPECIFIED


def phase_from_pb(value: int) -> t.InstallPhase | None:
    return _PHASES_BACK.get(value)  # type: ignore[call-overload,no-any-return]


# --- tensors -------------------------------------------------------------------------------


def spec_to_pb(spec: t.TensorSpec) -> common_pb2.TensorSpec:
    return common_pb2.TensorSpec(name=spec.name, dtype=spec.dtype, shape=list(spec.shape))


def spec_from_pb(msg: common_pb2.TensorSpec) -> t.TensorSpec:
    return t.TensorSpec(name=msg.name, dtype=msg.dtype, shape=tuple(msg.shape))


def specs_from_pb(msgs: Iterable[common_pb2.TensorSpec]) -> tuple[t.TensorSpec, ...]:
    return tuple(spec_from_pb(m) for m in msgs)


@functools.cache
def dtype_name(dtype: np.dtype[np.generic]) -> str:
    """``dtype.name``, cached: numpy computes it in Python (microseconds on every Predict)."""
    return dtype.name


@functools.cache
def _wire_dtype(name: str) -> np.dtype[np.generic] | None:
    """The little-endian numeric dtype called ``name``, or None (cached: this is the hot path)."""
    try:
        dtype = np.dtype(name).newbyteorder("<")
    except TypeError:
        return None
    return None if dtype.hasobject or dtype.kind in "OUSV" else dtype


def _little_endian(array: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
    a = np.ascontiguousarray(array)
    return a.astype(a.dtype.newbyteorder("<")) if a.dtype.byteorder == ">" else a


def array_to_pb(name: str, array: npt.NDArray[np.generic]) -> common_pb2.Tensor:
    a = _little_endian(array)
    return common_pb2.Tensor(
        name=name, dtype=dtype_name(a.dtype), shape=list(a.shape), data=a.tobytes()
    )


def add_array(field: Any, name: str, array: npt.NDArray[np.generic]) -> None:
    """Append ``array`` to a repeated ``Tensor`` field (``reply.outputs``) in place."""
    a = _little_endian(array)
    field.add(name=name, dtype=dtype_name(a.dtype), shape=a.shape, data=a.tobytes())


def array_from_pb(
    msg: common_pb2.Tensor, data: bytes | bytearray | memoryview | None = None
) -> npt.NDArray[np.generic]:
    """Decode one tensor; every mismatch is an ``InvalidInputError`` naming the tensor.
    ``data``: its bytes where they are held apart from ``msg`` (the fast local path's receive
    buffer: the array is a view of it, not a copy), instead of ``msg.data``."""
    dtype = _wire_dtype(msg.dtype)
    if dtype is None:
        try:
            np.dtype(msg.dtype)
        except TypeError as exc:
            raise InvalidInputError(f"tensor {msg.name!r}: unknown dtype {msg.dtype!r}") from exc
        raise InvalidInputError(f"tensor {msg.name!r}: dtype {msg.dtype!r} is not numeric")
    shape = tuple(msg.shape)
    count = 1
    for d in shape:  # a plain loop: this runs on every Predict, and numpy calls cost microseconds
        if d < 0:
            raise InvalidInputError(
                f"tensor {msg.name!r}: negative dimension in shape {list(shape)}"
            )
        count *= d
    expected = count * dtype.itemsize
    raw = msg.data if data is None else data
    if expected != len(raw):
        raise InvalidInputError(
            f"tensor {msg.name!r}: shape {list(shape)} of {msg.dtype} needs {expected} bytes, "
            f"got {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


# --- signed envelopes and manifests ---------------------------------------------------------


def envelope_to_pb(env: Envelope) -> common_pb2.Signed:
    return common_pb2.Signed(
        payload=env.payload,
        payload_type=env.payload_type,
        key_id=env.key_id,
        signature=env.signature,
    )


def envelope_from_pb(msg: common_pb2.Signed) -> Envelope:
    return Envelope(
        payload=msg.payload,
        payload_type=msg.payload_type,
        key_id=msg.key_id,
        signature=msg.signature,
    )


def decode_envelope(data: bytes) -> Envelope:
    msg = parse(common_pb2.Signed, data, what="signed envelope")
    if not msg.payload_type or not msg.signature:
        raise MalformedMessageError("signed envelope without payload type or signature")
    return envelope_from_pb(msg)


def health_to_pb(h: t.HealthPolicy) -> common_pb2.HealthPolicy:
    return common_pb2.HealthPolicy(
        smoke_inference=h.smoke_inference,
        latency_budget_ms=h.latency_budget_ms,
        max_load_failures=h.max_load_failures,
        health_window_s=h.health_window_s,
        golden_max_abs_error=h.golden_max_abs_error,
        golden_min_agreement=h.golden_min_agreement,
    )


def health_from_pb(msg: common_pb2.HealthPolicy) -> t.HealthPolicy:
    return t.HealthPolicy(
        smoke_inference=msg.smoke_inference,
        latency_budget_ms=msg.latency_budget_ms,
        max_load_failures=msg.max_load_failures,
        health_window_s=msg.health_window_s,
        golden_max_abs_error=msg.golden_max_abs_error or 1e-4,
        golden_min_agreement=msg.golden_min_agreement or 1.0,
    )


def manifest_to_pb(m: t.Manifest) -> common_pb2.Manifest:
    return common_pb2.Manifest(
        name=m.name,
        version=m.version,
        model_digest=m.model_digest,
        model_size=m.model_size,
        inputs=[spec_to_pb(s) for s in m.inputs],
        outputs=[spec_to_pb(s) for s in m.outputs],
        runtime=m.runtime,
        health=health_to_pb(m.health),
        created_at_ms=m.created_at_ms,
        compression_report_json=m.compression_report_json,
        annotations=dict(m.annotations),
        model_version=m.model_version,
        golden_digest=m.golden_digest,
        golden_size=m.golden_size,
        model_encoding=m.model_encoding,
        image=m.image,
        providers=[
            common_pb2.ExecutionProvider(name=p.name, options=dict(p.options)) for p in m.providers
        ],
        model_chunks=[common_pb2.Chunk(digest=c.digest, size=c.size) for c in m.model_chunks],
        variants=[variant_to_pb(v) for v in m.variants],
        preferences=[preference_to_pb(p) for p in m.preferences],
    )


def preference_to_pb(p: t.VariantPreference) -> common_pb2.VariantPreference:
    return common_pb2.VariantPreference(
        arch=p.arch,
        holds=list(p.holds),
        variant=p.variant,
        measured_on=p.measured_on,
        timings=[
            common_pb2.VariantTiming(variant=x.variant, p50_ms=x.p50_ms, providers=x.providers)
            for x in p.timings
        ],
    )


def preferences_from_pb(
    msgs: Sequence[common_pb2.VariantPreference], variants: Sequence[t.Variant]
) -> tuple[t.VariantPreference, ...]:
    """A manifest's variant preferences, bounded: at most ``MAX_VARIANTS``, each naming the
    default ("") or one of ``variants``; ``MalformedMessageError`` otherwise."""
    if len(msgs) > MAX_VARIANTS:
        raise MalformedMessageError(f"{len(msgs)} variant preferences (at most {MAX_VARIANTS})")
    names = {"", *(v.name for v in variants)}
    out = []
    for m in msgs:
        if m.variant not in names:
            raise MalformedMessageError(
                f"a variant preference names no variant: {m.variant[:80]!r}"
            )
        if len(m.holds) > 4 * MAX_VARIANTS or len(m.timings) > MAX_VARIANTS + 1:
            raise MalformedMessageError("a variant preference with too many entries")
        out.append(
            t.VariantPreference(
                arch=_text("preference arch", m.arch, limit=64),
                holds=tuple(_text("preference requirement", h, limit=80) for h in m.holds),
                variant=m.variant,
                measured_on=_text("preference device", m.measured_on, limit=128),
                timings=tuple(
                    t.VariantTiming(
                        _text("timing variant", x.variant, limit=64),
                        x.p50_ms,
                        _text("timing providers", x.providers, limit=400),
                    )
                    for x in m.timings
                ),
            )
        )
    return tuple(out)


def variant_to_pb(v: t.Variant) -> common_pb2.Variant:
    return common_pb2.Variant(
        name=v.name,
        model_digest=v.model_digest,
        model_size=v.model_size,
        model_encoding=v.model_encoding,
        providers=[
            common_pb2.ExecutionProvider(name=p.name, options=dict(p.options)) for p in v.providers
        ],
        requires=list(v.requires),
        golden_digest=v.golden_digest,
        golden_size=v.golden_size,
    )


MAX_VARIANTS = 8
"""Model variants one release may carry, and requirements one variant may name."""
_VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_REQUIREMENT = re.compile(r"^(arch|cpu|provider):[A-Za-z0-9_.-]{1,64}$|^gpu$")


def check_variants(variants: Sequence[t.Variant]) -> tuple[t.Variant, ...]:
    """``variants`` when a manifest may carry them: at most ``MAX_VARIANTS``, each named once
    (letters, digits, ``._-``), with a model digest, bounded providers and requirements of the
    forms "arch:X", "cpu:X", "gpu", "provider:X"; ``MalformedMessageError`` otherwise."""
    if len(variants) > MAX_VARIANTS:
        raise MalformedMessageError(f"{len(variants)} model variants (at most {MAX_VARIANTS})")
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise MalformedMessageError(f"a model variant is named twice: {', '.join(names)}")
    for v in variants:
        if not _VARIANT_NAME.match(v.name):
            raise MalformedMessageError(f"model variant name {v.name[:80]!r} is not a name")
        if not v.model_digest.startswith("sha256:"):
            raise MalformedMessageError(f"model variant {v.name}: no sha256 model digest")
        if len(v.requires) > MAX_VARIANTS:
            raise MalformedMessageError(f"model variant {v.name}: over {MAX_VARIANTS} requirements")
        for req in v.requires:
            if not _REQUIREMENT.match(req):
                raise MalformedMessageError(
                    f"model variant {v.name}: requirement {req[:80]!r} is not arch:X, cpu:X, "
                    "gpu or provider:X"
                )
        check_providers(v.providers)
    return tuple(variants)


def variants_from_pb(msgs: Sequence[common_pb2.Variant]) -> tuple[t.Variant, ...]:
    """A manifest's model variants, bounded (``check_variants``)."""
    return check_variants(
        [
            t.Variant(
                name=m.name,
                model_digest=m.model_digest,
                model_size=m.model_size,
                model_encoding=m.model_encoding,
                providers=providers_from_pb(m.providers),
                requires=tuple(m.requires),
                golden_digest=m.golden_digest,
                golden_size=m.golden_size,
            )
            for m in msgs
        ]
    )


MAX_CHUNKS = 65536
"""Chunks one model blob may be listed as (a 16 GiB model at the 256 KiB maximum chunk)."""


def chunks_from_pb(msgs: Sequence[common_pb2.Chunk], model_size: int) -> tuple[t.Chunk, ...]:
    """A manifest's model chunks: bounded, each with a sha256 digest and a length, and summing
    to the model's size (empty: the model is fetched whole); ``MalformedMessageError`` else."""
    if not msgs:
        return ()
    if len(msgs) > MAX_CHUNKS:
        raise MalformedMessageError(f"{len(msgs)} model chunks (at most {MAX_CHUNKS})")
    chunks = tuple(t.Chunk(_digest("model chunk", m.digest), m.size) for m in msgs)
    if any(c.size <= 0 or not c.digest for c in chunks):
        raise MalformedMessageError("a model chunk has no digest or no bytes")
    total = sum(c.size for c in chunks)
    if total != model_size:
        raise MalformedMessageError(
            f"model chunks add up to {total} bytes, the model is {model_size}"
        )
    return chunks


def manifest_from_pb(msg: common_pb2.Manifest) -> t.Manifest:
    if not (msg.name and msg.version and msg.model_digest and msg.inputs):
        raise MalformedMessageError("manifest without name, version, model digest or inputs")
    return t.Manifest(
        name=msg.name,
        version=msg.version,
        model_digest=msg.model_digest,
        model_size=msg.model_size,
        inputs=specs_from_pb(msg.inputs),
        outputs=specs_from_pb(msg.outputs),
        runtime=msg.runtime or "onnxruntime",
        health=health_from_pb(msg.health),
        created_at_ms=msg.created_at_ms,
        compression_report_json=msg.compression_report_json,
        annotations=dict(msg.annotations),
        model_version=msg.model_version,
        golden_digest=msg.golden_digest,
        golden_size=msg.golden_size,
        model_encoding=msg.model_encoding,
        image=msg.image,
        providers=providers_from_pb(msg.providers),
        model_chunks=chunks_from_pb(msg.model_chunks, msg.model_size),
        variants=(variants := variants_from_pb(msg.variants)),
        preferences=preferences_from_pb(msg.preferences, variants),
    )


MAX_PROVIDERS = 8
"""Execution providers one release may name, and options one provider may carry (x4)."""
_PROVIDER_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,63}$")


def provider_name(value: str) -> str:
    """``value`` when it may name an ONNX Runtime execution provider (letters and digits)."""
    if not _PROVIDER_NAME.match(value):
        raise MalformedMessageError(f"execution provider {value[:80]!r} is not a provider name")
    return value


def providers_from_pb(
    msgs: Sequence[common_pb2.ExecutionProvider],
) -> tuple[t.ExecutionProvider, ...]:
    """A manifest's provider preference, bounded (``check_providers``)."""
    return check_providers([t.ExecutionProvider(m.name, dict(m.options)) for m in msgs])


def check_providers(
    providers: Sequence[t.ExecutionProvider],
) -> tuple[t.ExecutionProvider, ...]:
    """``providers`` when a manifest may carry them: at most ``MAX_PROVIDERS``, ONNX Runtime
    names, at most 32 options each of bounded size; ``MalformedMessageError`` otherwise."""
    if len(providers) > MAX_PROVIDERS:
        raise MalformedMessageError(
            f"{len(providers)} execution providers (at most {MAX_PROVIDERS})"
        )
    for p in providers:
        name = provider_name(p.name)
        if len(p.options) > 4 * MAX_PROVIDERS:
            raise MalformedMessageError(f"{name}: {len(p.options)} options (at most 32)")
        for key, value in p.options.items():
            _text(f"{name} option", key, limit=64)
            _text(f"{name} option {key!r}", value)
    return tuple(t.ExecutionProvider(p.name, dict(p.options)) for p in providers)


def encode_manifest(m: t.Manifest) -> bytes:
    return manifest_to_pb(m).SerializeToString(deterministic=True)


def decode_manifest(data: bytes) -> t.Manifest:
    return manifest_from_pb(parse(common_pb2.Manifest, data, what="manifest"))


# --- device reports -------------------------------------------------------------------------


def clean_text(text: str, *, limit: int = MAX_MESSAGE_BYTES) -> str:
    """``text`` as a device should send it: control characters as spaces, cut to ``limit``."""
    text = CONTROL_CHARS.sub(" ", text)
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode(errors="ignore") + "..."


def _text(what: str, value: str, *, limit: int = MAX_TEXT_BYTES) -> str:
    size = len(value.encode())
    if size > limit:
        raise MalformedMessageError(f"{what} of {size} bytes (at most {limit})")
    if (bad := CONTROL_CHARS.search(value)) is not None:
        raise MalformedMessageError(f"{what} contains control character {bad.group()!r}")
    return value


def _count(what: str, value: int) -> int:
    if not 0 <= value <= MAX_COUNT:
        raise MalformedMessageError(f"{what} {value} is out of range (0..2**62)")
    return value


def _figure(what: str, value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise MalformedMessageError(
            f"telemetry {what} = {value!r}: a figure must not be NaN, infinite or negative"
        )
    return value


def _named(kind: str, value: str) -> str:
    try:
        return t.validate_name(kind, value)
    except InvalidInputError as exc:
        raise MalformedMessageError(str(exc)) from exc


def _endpoint(what: str, value: str) -> str:
    if not value:
        return value
    _text(what, value)
    try:
        return t.validate_endpoint(what, value)
    except InvalidInputError as exc:
        raise MalformedMessageError(str(exc)) from exc


def _digest(what: str, value: str) -> str:
    if not value:
        return value
    try:
        return digests.validate(_text(what, value))
    except InvalidInputError as exc:
        raise MalformedMessageError(f"{what}: {exc}") from exc


def check_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """``labels`` when a device may report them (count, sizes, no control characters)."""
    if len(labels) > MAX_LABELS:
        raise MalformedMessageError(f"{len(labels)} labels (at most {MAX_LABELS})")
    for key, value in labels.items():
        if not key:
            raise MalformedMessageError("a label with an empty key")
        _text("label key", key, limit=63)
        _text(f"label {key!r}", value)
    return dict(labels)


def status_to_pb(s: t.DeviceStatus) -> mqtt_pb2.DeviceStatus:
    return mqtt_pb2.DeviceStatus(
        device_id=s.device_id,
        fleet=s.fleet,
        labels=dict(s.labels),
        phase=phase_to_pb(s.phase),
        active_release=s.active_release,
        previous_release=s.previous_release,
        target_release=s.target_release,
        generation_applied=s.generation_applied,
        last_error=clean_text(s.last_error),
        predict_endpoint=s.predict_endpoint,
        agent_version=s.agent_version,
        at_ms=s.at_ms,
        active_manifest_digest=s.active_manifest_digest,
        seq=s.seq,
        runtimes=list(s.runtimes),
        container=container_to_pb(s.container) if s.container is not None else None,
        hardware=hardware_to_pb(s.hardware) if s.hardware is not None else None,
        active_provider=s.active_provider,
        provider_fallback=clean_text(s.provider_fallback, limit=MAX_FALLBACK_BYTES),
        active_variant=s.active_variant,
    )


def decode_status(data: bytes) -> t.DeviceStatus:
    msg = parse(mqtt_pb2.DeviceStatus, data, what="device status")
    phase = phase_from_pb(msg.phase)
    if not msg.device_id or not msg.fleet or phase is None:
        raise MalformedMessageError("device status without device id, fleet or phase")
    return t.DeviceStatus(
        device_id=_named("device", msg.device_id),
        fleet=_named("fleet", msg.fleet),
        phase=phase,
        labels=check_labels(msg.labels),
        active_release=_text("active release", msg.active_release),
        previous_release=_text("previous release", msg.previous_release),
        target_release=_text("target release", msg.target_release),
        generation_applied=_count("generation applied", msg.generation_applied),
        last_error=_text("last error", msg.last_error, limit=MAX_MESSAGE_BYTES),
        predict_endpoint=_endpoint("predict endpoint", msg.predict_endpoint),
        agent_version=_text("agent version", msg.agent_version, limit=64),
        at_ms=_count("at_ms", msg.at_ms),
        active_manifest_digest=_digest("active manifest digest", msg.active_manifest_digest),
        seq=_count("status seq", msg.seq),
        runtimes=tuple(_named("runtime", r) for r in msg.runtimes[:8]),
        container=container_from_pb(msg.container) if msg.HasField("container") else None,
        hardware=hardware_from_pb(msg.hardware) if msg.HasField("hardware") else None,
        active_provider=provider_name(msg.active_provider) if msg.active_provider else "",
        provider_fallback=_text(
            "provider fallback", msg.provider_fallback, limit=MAX_FALLBACK_BYTES
        ),
        active_variant=_text("active variant", msg.active_variant, limit=64),
    )


MAX_FALLBACK_BYTES = 1024
"""A status's ``provider_fallback`` (UTF-8 bytes)."""
MAX_HARDWARE_ITEMS = 16
"""CPU features, GPUs or providers one device may report."""


def hardware_to_pb(h: t.Hardware) -> mqtt_pb2.Hardware:
    """The agent's probe as sent: text cleaned and cut, lists cut, to fit ``hardware_from_pb``."""
    cap = MAX_HARDWARE_ITEMS
    return mqtt_pb2.Hardware(
        arch=clean_text(h.arch, limit=32),
        cpu_features=[clean_text(f, limit=32) for f in h.cpu_features[:cap]],
        cores=min(h.cores, 2**32 - 1),
        memory_bytes=min(h.memory_bytes, MAX_COUNT),
        gpus=[
            mqtt_pb2.Gpu(name=clean_text(g.name, limit=128), memory_bytes=g.memory_bytes)
            for g in h.gpus[:cap]
        ],
        providers=list(h.providers[:cap]),
        board=clean_text(h.board, limit=128),
        onnxruntime_version=clean_text(h.onnxruntime_version, limit=64),
    )


def hardware_from_pb(msg: mqtt_pb2.Hardware) -> t.Hardware:
    """A device's hardware report, bounded like the rest of its status."""
    cap = MAX_HARDWARE_ITEMS
    for what, items in (
        ("CPU features", msg.cpu_features),
        ("GPUs", msg.gpus),
        ("providers", msg.providers),
    ):
        if len(items) > cap:
            raise MalformedMessageError(f"hardware with {len(items)} {what} (at most {cap})")
    return t.Hardware(
        arch=_text("hardware arch", msg.arch, limit=32),
        cpu_features=tuple(_text("CPU feature", f, limit=32) for f in msg.cpu_features),
        cores=msg.cores,
        memory_bytes=_count("hardware memory_bytes", msg.memory_bytes),
        gpus=tuple(
            t.Gpu(_text("GPU name", g.name, limit=128), _count("GPU memory_bytes", g.memory_bytes))
            for g in msg.gpus
        ),
        providers=tuple(provider_name(p) for p in msg.providers),
        board=_text("board", msg.board, limit=128),
        onnxruntime_version=_text("onnxruntime version", msg.onnxruntime_version, limit=64),
    )


def container_to_pb(c: t.ContainerStatus) -> mqtt_pb2.ContainerStatus:
    return mqtt_pb2.ContainerStatus(
        release=c.release,
        container_id=c.container_id,
        state=c.state,
        image=c.image,
        restarts=min(c.restarts, 2**32 - 1),
        cpu_seconds=c.cpu_seconds,
        memory_bytes=c.memory_bytes,
        memory_limit_bytes=c.memory_limit_bytes,
    )


def container_from_pb(msg: mqtt_pb2.ContainerStatus) -> t.ContainerStatus:
    """A device's container figures, checked like the rest of its status."""
    return t.ContainerStatus(
        release=_text("container release", msg.release),
        container_id=_text("container id", msg.container_id, limit=80),
        state=_named("container state", msg.state) if msg.state else "",
        image=_digest("container image", msg.image),
        restarts=msg.restarts,
        cpu_seconds=_figure("container cpu_seconds", msg.cpu_seconds),
        memory_bytes=_count("container memory_bytes", msg.memory_bytes),
        memory_limit_bytes=_count("container memory_limit_bytes", msg.memory_limit_bytes),
    )


def event_to_pb(e: t.DeviceEvent) -> mqtt_pb2.DeviceEvent:
    return mqtt_pb2.DeviceEvent(
        device_id=e.device_id,
        kind=e.kind,
        release=e.release,
        generation=e.generation,
        phase=phase_to_pb(e.phase),
        message=clean_text(e.message),
        at_ms=e.at_ms,
        seq=e.seq,
    )


def event_from_pb(msg: mqtt_pb2.DeviceEvent) -> t.DeviceEvent:
    return t.DeviceEvent(
        device_id=msg.device_id,
        kind=msg.kind,
        message=msg.message,
        release=msg.release,
        generation=msg.generation,
        phase=phase_from_pb(msg.phase),
        at_ms=msg.at_ms,
        seq=msg.seq,
    )


def decode_event(data: bytes) -> t.DeviceEvent:
    msg = parse(mqtt_pb2.DeviceEvent, data, what="device event")
    if not msg.device_id or not msg.kind:
        raise MalformedMessageError("device event without device id or kind")
    _named("device", msg.device_id)
    _named("event kind", msg.kind)
    _text("event release", msg.release)
    _count("event generation", msg.generation)
    _count("event seq", msg.seq)
    _text("event message", msg.message, limit=MAX_MESSAGE_BYTES)
    _count("at_ms", msg.at_ms)
    return event_from_pb(msg)


def telemetry_to_pb(x: t.Telemetry) -> mqtt_pb2.Telemetry:
    msg = mqtt_pb2.Telemetry(
        device_id=x.device_id,
        release=x.release,
        window_s=x.window_s,
        requests=x.requests,
        errors=x.errors,
        p50_ms=x.p50_ms,
        p95_ms=x.p95_ms,
        p99_ms=x.p99_ms,
        cpu_percent=x.cpu_percent,
        memory_bytes=x.memory_bytes,
        at_ms=x.at_ms,
        refused=x.refused,
    )
    if x.power_w is not None:
        msg.power_w = x.power_w
    if x.energy_per_inference_j is not None:
        msg.energy_per_inference_j = x.energy_per_inference_j
    return msg


def telemetry_from_pb(msg: mqtt_pb2.Telemetry) -> t.Telemetry:
    return t.Telemetry(
        device_id=msg.device_id,
        release=msg.release,
        window_s=msg.window_s,
        requests=msg.requests,
        errors=msg.errors,
        p50_ms=msg.p50_ms,
        p95_ms=msg.p95_ms,
        p99_ms=msg.p99_ms,
        power_w=msg.power_w if msg.HasField("power_w") else None,
        energy_per_inference_j=(
            msg.energy_per_inference_j if msg.HasField("energy_per_inference_j") else None
        ),
        cpu_percent=msg.cpu_percent,
        memory_bytes=msg.memory_bytes,
        at_ms=msg.at_ms,
        refused=msg.refused,
    )


def decode_telemetry(data: bytes) -> t.Telemetry:
    msg = parse(mqtt_pb2.Telemetry, data, what="telemetry")
    if not msg.device_id:
        raise MalformedMessageError("telemetry without device id")
    _named("device", msg.device_id)
    _text("telemetry release", msg.release)
    for name in ("window_s", "p50_ms", "p95_ms", "p99_ms", "cpu_percent"):
        _figure(name, getattr(msg, name))
    if msg.HasField("power_w"):
        _figure("power_w", msg.power_w)
    if msg.HasField("energy_per_inference_j"):
        _figure("energy_per_inference_j", msg.energy_per_inference_j)
    for name in ("requests", "errors", "refused", "memory_bytes", "at_ms"):
        _count(f"telemetry {name}", getattr(msg, name))
    return telemetry_from_pb(msg)


def presence_to_pb(p: t.Presence) -> mqtt_pb2.Presence:
    return mqtt_pb2.Presence(
        device_id=p.device_id,
        fleet=p.fleet,
        online=p.online,
        predict_endpoint=p.predict_endpoint,
        active_release=p.active_release,
        at_ms=p.at_ms,
    )


def decode_presence(data: bytes) -> t.Presence:
    msg = parse(mqtt_pb2.Presence, data, what="presence")
    if not msg.device_id or not msg.fleet:
        raise MalformedMessageError("presence without device id or fleet")
    return t.Presence(
        device_id=_named("device", msg.device_id),
        fleet=_named("fleet", msg.fleet),
        online=msg.online,
        predict_endpoint=_endpoint("predict endpoint", msg.predict_endpoint),
        active_release=_text("active release", msg.active_release),
        at_ms=_count("at_ms", msg.at_ms),
    )


def describe_specs(specs: Sequence[t.TensorSpec]) -> str:
    return ", ".join(s.describe() for s in specs)
