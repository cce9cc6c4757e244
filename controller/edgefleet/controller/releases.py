"""Releases: a registered model version frozen as ``name:semver`` with a signed manifest.

The manifest is encoded once (``wire.encode_manifest``, deterministic), signed with the active
key and stored as the signed envelope's bytes; what a device later verifies is exactly what was
signed here. A release never changes: the same ``name:version`` cannot be made twice.

Golden data given with a release is checked and completed (``releasegolden.normalize``), stored
in the blob store next to the model, and named in the manifest by digest and size, so devices
fetch and verify it like the model and trust it as much as the signature.

A compressed model version (one with ``Registry.compression_artifacts``) releases with its
compression report in the manifest and the compression's golden data (unless the request gives
golden data of its own); when compression left a packed transfer container, that container is
the blob devices download (``model_digest``/``model_size`` are its own, ``model_encoding`` is
``efpk``) and ``annotations["decoded_model_digest"]`` names the model it decodes to.

A container release (``runtime="container"``) also has an image: built through the controller
host's Docker (``images.build_release_image``: the shared runtime base plus a layer with the
model and golden data) or the user's own (``image=REF``); its digest is signed in the manifest
(``image``), so a device runs no image but that one. The image is built before anything is
stored: a failed build leaves no release behind.

A release may carry model variants for hardware classes (``VariantSpec``: another registered
model version, the conditions a device must meet, its providers), signed into the manifest in
order (``Manifest.variants``); each must take and give what the release's model does, and name
only requirements devices report (``REQUIREMENT_KINDS``). A device runs the first that fits its
hardware, else the release's own model. With golden data, each variant gets its own: the
release's golden inputs with that variant model's outputs as the expectations.

With ``profile_on`` (``release create --profile-on DEVICE``), the default model and each variant
that fits a device's reported hardware are timed on that device through its agent's Benchmark
(``benchmarking.DeviceTimer.profile``: each on its own providers, two interleaved rounds, the
better p50 of the two), and the fastest is signed as the preference of the device's hardware
class (``Manifest.preferences``, ``edgefleet.common.hwclass``): devices of that class run it.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
import semver
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from edgefleet.common import chunking, digests, hwclass, signing, wire
from edgefleet.common import types as t
from edgefleet.common.artifacts import BlobStore
from edgefleet.common.errors import (
    AlreadyExistsError,
    InvalidInputError,
    MalformedMessageError,
    NotFoundError,
)
from edgefleet.common.signing import Envelope
from edgefleet.controller import images
from edgefleet.controller import releasegolden as golden_data
from edgefleet.controller.db import Database, ReleaseRow
from edgefleet.controller.keys import KeyRing
from edgefleet.controller.registry import CompressionArtifacts, ModelVersion, Registry

log = logging.getLogger(__name__)

DECODED_DIGEST = "decoded_model_digest"  # annotation of a packed release: the model's digest
RUNTIMES = ("onnxruntime", "container")
CPU_FEATURES = ("avx2", "avx512", "vnni", "amx", "f16c", "neon", "dotprod", "fp16", "i8mm", "sve")
"""The CPU features an agent reports (``edgefleet.agent.hardware``), as "cpu:<feature>"."""
ARCHES = ("x86_64", "aarch64", "armv7l")
REQUIREMENT_KINDS = "arch:<x86_64|aarch64|armv7l>, cpu:<feature>, gpu, provider:<name>"


PROFILE_ROUNDS = 2
"""Interleaved timing rounds per candidate with --profile-on (the better p50 counts)."""


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


class ProfileTimer(Protocol):
    """Times a model on one device (``benchmarking.DeviceTimer``)."""

    def profile(
        self,
        model: bytes,
        feed: Mapping[str, np.ndarray],
        *,
        providers: tuple[t.ExecutionProvider, ...] = (),
    ) -> tuple[float, str]: ...


Profiler = Callable[[str], tuple[ProfileTimer, t.Hardware]]
"""A device id -> its timer and reported hardware; raises for an unknown or silent device."""


@dataclass(frozen=True)
class VariantSpec:
    """A model variant to release: registered ``model`` version ``model_version`` (0 = its
    newest), for devices meeting every one of ``requires``, run on ``providers``."""

    name: str
    model: str
    model_version: int = 0
    requires: tuple[str, ...] = ()
    providers: tuple[t.ExecutionProvider, ...] = ()


def validate_requirement(variant: str, requirement: str) -> str:
    """``requirement`` when devices can report it (``REQUIREMENT_KINDS``); else
    ``InvalidInputError``."""
    kind, sep, value = requirement.partition(":")
    known = (
        (requirement == "gpu")
        or (sep and kind == "arch" and value in ARCHES)
        or (sep and kind == "cpu" and value in CPU_FEATURES)
        or (sep and kind == "provider" and value.endswith("ExecutionProvider"))
    )
    if not known:
        raise InvalidInputError(
            f"variant {variant}: unknown requirement {requirement!r} (one of {REQUIREMENT_KINDS};"
            f" CPU features: {', '.join(CPU_FEATURES)})"
        )
    return requirement


def validate_health(h: t.HealthPolicy) -> t.HealthPolicy:
    """``InvalidInputError`` for a policy no device could follow; the policy otherwise."""
    problems = [
        f"{name} must not be negative"
        for name, value in (
            ("latency budget", h.latency_budget_ms),
            ("health window", h.health_window_s),
            ("max load failures", h.max_load_failures),
            ("golden max abs error", h.golden_max_abs_error),
        )
        if value < 0
    ]
    if not 0.0 <= h.golden_min_agreement <= 1.0:
        problems.append(f"golden min agreement must be in 0..1, got {h.golden_min_agreement:g}")
    if problems:
        raise InvalidInputError("health policy: " + "; ".join(problems))
    return h


def build_manifest(
    model: ModelVersion,
    ref: t.ReleaseRef,
    *,
    health: t.HealthPolicy,
    notes: str,
    now_ms: int,
    golden: tuple[str, int] = ("", 0),
    compression: CompressionArtifacts | None = None,
) -> t.Manifest:
    annotations = {"notes": notes} if notes else {}
    digest, size, encoding = model.digest, model.size, ""
    if compression is not None and compression.transfer is not None:
        digest, size = compression.transfer_digest, len(compression.transfer)
        encoding = compression.model_encoding
        annotations[DECODED_DIGEST] = model.digest
    return t.Manifest(
        name=ref.name,
        version=ref.version,
        model_digest=digest,
        model_size=size,
        inputs=model.inputs,
        outputs=model.outputs,
        health=health,
        created_at_ms=now_ms,
        model_version=model.version,
        compression_report_json=compression.report_json if compression is not None else "",
        annotations=annotations,
        golden_digest=golden[0],
        golden_size=golden[1],
        model_encoding=encoding,
    )


def validate_providers(
    providers: Sequence[t.ExecutionProvider],
) -> tuple[t.ExecutionProvider, ...]:
    """An operator's provider preference as a device will accept it (``wire``'s bounds: at
    most 8, ONNX Runtime names, options of bounded size), each provider named once."""
    try:
        checked = wire.check_providers(providers)
    except MalformedMessageError as exc:
        raise InvalidInputError(str(exc)) from exc
    names = [p.name for p in checked]
    if len(set(names)) != len(names):
        raise InvalidInputError(f"an execution provider is named twice: {', '.join(names)}")
    return checked


def release_golden(compression_npz: bytes) -> bytes:
    """The compression's golden data (``input/<name>``, ``output/<name>``, ``tolerance``) as
    release golden data: the outputs become expectations; the tolerance (compressed against
    original) does not apply to a device running the compressed model itself and is dropped."""
    with np.load(io.BytesIO(compression_npz), allow_pickle=False) as npz:
        arrays = {
            ("expected/" + k.removeprefix("output/")) if k.startswith("output/") else k: npz[k]
            for k in npz.files
            if k != "tolerance"
        }
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


class Releases:
    def __init__(
        self,
        db: Database,
        registry: Registry,
        *,
        keys: KeyRing,
        clock: Callable[[], int],
        blobs: BlobStore | None = None,
        docker_client: Callable[[], Any] = images.client,
        profiler: Profiler | None = None,
    ) -> None:
        self._profiler = profiler  # for --profile-on
        self._docker = docker_client  # asked only for container releases
        self._db = db
        self._registry = registry
        self._keys = keys
        self._clock = clock
        self._blobs = blobs  # where models are and golden data goes; None: no golden data

    def create(
        self,
        ref: t.ReleaseRef,
        *,
        model_version: int = 0,
        health: t.HealthPolicy | None = None,
        notes: str = "",
        golden: bytes = b"",
        runtime: str = "",
        image: str = "",
        providers: Sequence[t.ExecutionProvider] = (),
        variants: Sequence[VariantSpec] = (),
        profile_on: Sequence[str] = (),
    ) -> Release:
        """Sign and store ``ref`` from model ``ref.name`` version ``model_version`` (0 = newest).

        ``golden``: an ``.npz`` of golden inputs (and expected outputs) to check the release
        against on devices; empty = the compression's golden data for a compressed version,
        smoke inference on zeros only otherwise. ``runtime``: "onnxruntime" (default) or
        "container", with ``image`` the user's own image (default: built here). ``providers``:
        runtime "onnxruntime"'s execution providers in order of preference (empty: the CPU).
        ``variants``: models for hardware classes, in the order devices try them.
        ``profile_on``: devices to time the default model and the variants that fit each on;
        the fastest becomes the preference of that device's hardware class.
        """
        runtime = runtime or "onnxruntime"
        if runtime not in RUNTIMES:
            raise InvalidInputError(
                f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}"
            )
        if image and runtime != "container":
            raise InvalidInputError("an image is for runtime container only")
        if providers and runtime != "onnxruntime":
            raise InvalidInputError("execution providers are for runtime onnxruntime only")
        if variants and runtime != "onnxruntime":
            raise InvalidInputError("model variants are for runtime onnxruntime only")
        preference = validate_providers(providers)
        policy = validate_health(health or t.HealthPolicy())
        model = self._registry.get(ref.name, model_version)
        chosen = self._variants(model, variants)
        self._check_profile(profile_on, chosen)
        if self._find(ref) is not None:
            raise AlreadyExistsError("release", str(ref))
        key_id, private_key = self._keys.active()
        compression = self._registry.compression_artifacts(model)
        if not golden and compression is not None and compression.golden_npz:
            golden = release_golden(compression.golden_npz)
        stored = self._store_golden(model, golden) if golden else ("", 0)
        built = self._image(ref, model, stored[0], image) if runtime == "container" else None
        now = self._clock()
        manifest = build_manifest(
            model,
            ref,
            health=policy,
            notes=notes,
            now_ms=now,
            golden=stored,
            compression=compression,
        )
        if built is not None:
            manifest = replace(manifest, runtime=runtime, image=built.digest)
        if preference:  # signed with the rest: a device runs the release only on these
            manifest = replace(manifest, providers=preference)
        if chosen:
            manifest = replace(manifest, variants=self._variant_golden(chosen, stored[0]))
        if profile_on:
            manifest = replace(
                manifest,
                preferences=self._profile(manifest, model, chosen, profile_on, stored[0]),
            )
        if runtime == "onnxruntime":  # the chunk list is signed too: each chunk is verifiable
            manifest = replace(manifest, model_chunks=self._store_chunks(manifest))
        envelope = signing.sign(wire.encode_manifest(manifest), signing.MANIFEST_TYPE, private_key)
        row = ReleaseRow(
            name=ref.name,
            version=ref.version,
            model_version=model.version,
            manifest_digest=digests.of_bytes(envelope.payload),
            key_id=key_id,
            signed_manifest=wire.envelope_to_pb(envelope).SerializeToString(deterministic=True),
            notes=notes,
            created_at_ms=now,
        )
        try:
            with self._db.write() as session:
                session.add(row)
        except IntegrityError as exc:  # a concurrent create of the same release won
            raise AlreadyExistsError("release", str(ref)) from exc
        log.info("release %s from model version %d, signed by %s", ref, model.version, key_id)
        return _record(row)

    def _variants(
        self, model: ModelVersion, specs: Sequence[VariantSpec]
    ) -> list[tuple[t.Variant, ModelVersion]]:
        """``specs`` as manifest variants of a release of ``model``, each with its model
        version: a registered one with ``model``'s inputs and outputs, known requirements."""
        made, sources = [], []
        for spec in specs:
            requires = tuple(validate_requirement(spec.name, r) for r in spec.requires)
            source = self._registry.get(spec.model, spec.model_version)
            if (source.inputs, source.outputs) != (model.inputs, model.outputs):
                raise InvalidInputError(
                    f"variant {spec.name}: {spec.model} v{source.version} does not take and give"
                    f" what {model.name} v{model.version} does (inputs and outputs must match)"
                )
            made.append(
                t.Variant(
                    name=spec.name,
                    model_digest=source.digest,
                    model_size=source.size,
                    providers=validate_providers(spec.providers),
                    requires=requires,
                )
            )
            sources.append(source)
        try:
            return list(zip(wire.check_variants(made), sources, strict=True))
        except MalformedMessageError as exc:
            raise InvalidInputError(str(exc)) from exc

    def _check_profile(self, profile_on: Sequence[str], chosen: Sequence[object]) -> None:
        if profile_on and not chosen:
            raise InvalidInputError("--profile-on chooses among model variants: give --variant")
        if profile_on and self._profiler is None:
            raise InvalidInputError("this controller cannot time models on devices")

    def _profile(
        self,
        manifest: t.Manifest,
        model: ModelVersion,
        chosen: Sequence[tuple[t.Variant, ModelVersion]],
        devices: Sequence[str],
        golden_digest: str,
    ) -> tuple[t.VariantPreference, ...]:
        """Per device of ``devices``: its hardware class's preference, the fastest of the
        default model and the variants that fit it, measured there."""
        assert self._profiler is not None
        feed = self._timing_feed(model, golden_digest)
        candidates = [("", model, manifest.providers, ())] + [
            (v.name, source, v.providers, v.requires) for v, source in chosen
        ]
        blobs: dict[str, bytes] = {}
        out: list[t.VariantPreference] = []
        for device_id in dict.fromkeys(devices):
            timer, hw = self._profiler(device_id)
            arch, have = hwclass.class_of(manifest, hw)
            for p in out:
                if (p.arch, p.holds) == (arch, have):
                    raise InvalidInputError(
                        f"devices {p.measured_on} and {device_id} are of one hardware class "
                        f"({arch} {'+'.join(have) or 'with none of the requirements'}): "
                        "profile one of them"
                    )
            fitting = [c for c in candidates if all(hwclass.holds(r, hw) for r in c[3])]
            best: dict[str, tuple[float, str]] = {}
            for _round in range(PROFILE_ROUNDS):  # interleaved: drift hits every candidate
                for name, source, providers, _requires in fitting:
                    if source.digest not in blobs:
                        blobs[source.digest] = self._registry.model_bytes(source)
                    p50, used = timer.profile(blobs[source.digest], feed, providers=providers)
                    if name not in best or p50 < best[name][0]:
                        best[name] = (p50, used)
            fastest = min(best, key=lambda n: best[n][0])
            log.info(
                "release %s: on %s (%s %s) %s is fastest: %s",
                manifest.ref,
                device_id,
                arch,
                "+".join(have),
                fastest or "the default model",
                ", ".join(f"{n or 'default'} {p:.3f} ms" for n, (p, _u) in best.items()),
            )
            out.append(
                t.VariantPreference(
                    arch=arch,
                    holds=have,
                    variant=fastest,
                    measured_on=device_id,
                    timings=tuple(t.VariantTiming(n, p, u) for n, (p, u) in best.items()),
                )
            )
        return tuple(out)

    def _timing_feed(self, model: ModelVersion, golden_digest: str) -> dict[str, np.ndarray]:
        """One input for timing: the release's first golden sample when it has golden data
        (the whole golden batch for a fixed batch size), else zeros (dynamic dimensions 1)."""
        if golden_digest and self._blobs is not None:
            raw = self._blobs.read(golden_digest)
            with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
                arrays = {
                    k.removeprefix("input/"): npz[k]
                    for k in npz.files
                    if "/" not in k or k.startswith("input/")
                }
            feed = {}
            for spec in model.inputs:
                if spec.name in arrays:
                    a = arrays[spec.name]
                    feed[spec.name] = a[:1] if a.ndim and spec.shape and spec.shape[0] < 0 else a
            if len(feed) == len(model.inputs):
                return feed
        return {
            s.name: np.zeros(tuple(d if d >= 0 else 1 for d in s.shape), np.dtype(s.dtype))
            for s in model.inputs
        }

    def _variant_golden(
        self, variants: Sequence[tuple[t.Variant, ModelVersion]], golden_digest: str
    ) -> tuple[t.Variant, ...]:
        """``variants`` each with golden data of its own: the release's golden inputs (its
        expectations dropped) with the variant model's outputs, computed here; unchanged
        without release golden data."""
        if not golden_digest or self._blobs is None:
            return tuple(v for v, _ in variants)
        with np.load(io.BytesIO(self._blobs.read(golden_digest)), allow_pickle=False) as npz:
            inputs = {k: npz[k] for k in npz.files if "expected/" not in k}
        buf = io.BytesIO()
        np.savez(buf, **inputs)
        out = []
        for v, source in variants:
            digest, size = self._store_golden(source, buf.getvalue())
            out.append(replace(v, golden_digest=digest, golden_size=size))
        return tuple(out)

    def _image(
        self, ref: t.ReleaseRef, model: ModelVersion, golden_digest: str, image: str
    ) -> images.BuiltImage:
        """The release's image: the user's ``image``, or the runtime base + model + golden."""
        client = self._docker()
        if image:
            return images.adopt_image(client, ref, image)
        if self._blobs is None:
            raise InvalidInputError("this controller was started without a blob store")
        golden = self._blobs.read(golden_digest) if golden_digest else b""
        return images.build_release_image(
            client, ref, model=self._blobs.read(model.digest), golden=golden
        )

    def _store_chunks(self, manifest: t.Manifest) -> tuple[t.Chunk, ...]:
        """Split the manifest's model blob into content-defined chunks, each stored as a blob
        of its own (served by ArtifactService like any); the chunk list (empty: no blob store,
        or a blob too small to gain from chunks: devices fetch it whole)."""
        if self._blobs is None or not self._blobs.has(manifest.model_digest):
            return ()
        data = self._blobs.read(manifest.model_digest)
        if len(data) < 2 * chunking.MIN_CHUNK:
            return ()
        chunks = []
        for chunk, piece in chunking.split(data):
            if not self._blobs.has(chunk.digest):
                self._blobs.put(piece)
            chunks.append(chunk)
        log.info("model %s stored as %d chunks", manifest.model_digest, len(chunks))
        return tuple(chunks)

    def _store_golden(self, model: ModelVersion, data: bytes) -> tuple[str, int]:
        """Normalize golden data for ``model`` and store it; (digest, size)."""
        if self._blobs is None:
            raise InvalidInputError("this controller was started without a blob store")
        normalized = golden_data.normalize_isolated(
            self._registry.sandbox,
            data,
            model=self._blobs.read(model.digest),
            inputs=model.inputs,
            outputs=model.outputs,
        )
        digest = self._blobs.put(normalized)
        log.info("golden data %s for %s: %s", digest, model.name, golden_data.summary(normalized))
        return digest, len(normalized)

    def list_releases(self, name: str = "") -> list[Release]:
        stmt = select(ReleaseRow)
        if name:
            stmt = stmt.where(ReleaseRow.name == name)
        with self._db.read() as session:
            releases = [_record(r) for r in session.scalars(stmt)]
        return sorted(releases, key=lambda r: (r.ref.name, semver.Version.parse(r.ref.version)))

    def get(self, ref: t.ReleaseRef) -> Release:
        release = self._find(ref)
        if release is None:
            raise NotFoundError("release", str(ref))
        return release

    def _find(self, ref: t.ReleaseRef) -> Release | None:
        with self._db.read() as session:
            row = session.scalars(
                select(ReleaseRow).where(
                    ReleaseRow.name == ref.name, ReleaseRow.version == ref.version
                )
            ).first()
        return _record(row) if row is not None else None


def _record(row: ReleaseRow) -> Release:
    envelope = wire.decode_envelope(row.signed_manifest)
    return Release(
        ref=t.ReleaseRef(row.name, row.version),
        manifest=wire.decode_manifest(envelope.payload),
        signed_manifest=envelope,
        manifest_digest=row.manifest_digest,
        created_at_ms=row.created_at_ms,
        notes=row.notes,
    )
