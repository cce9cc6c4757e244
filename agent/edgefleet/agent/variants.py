"""Which model variant of a release this device runs.

A release may carry model variants for hardware classes (``Manifest.variants``: fp16 for
GPUs, int8 for CPUs with dot-product or VNNI), in order. The device runs the first whose
requirements all hold on the hardware its agent probed at start, else the release's default
(the manifest's top-level model fields); a variant measured fastest on a device of this one's
hardware class (``release create --profile-on``: ``Manifest.preferences``) comes first when
it fits. The rule is ``edgefleet.common.hwclass``, shared with the controller. Requirements:

    arch:<machine>      ``platform.machine()`` is that (x86_64, aarch64)
    cpu:<feature>       the probed CPU features include it (avx2, avx512, vnni, dotprod, fp16)
    gpu                 a GPU was found
    provider:<name>     this ONNX Runtime offers the execution provider

A requirement of another form (one a newer controller knows) never holds here.

``resolve`` turns a verified manifest into the one the rest of the agent installs, checks and
serves: the chosen variant's digest, size, encoding and providers in the top-level fields (no
chunk list: those are the default blob's) and its name in ``Manifest.variant``. Every place
that opens a signed manifest (a desired state, a slot) resolves it, so fetching, verification,
staging and loading all see the same model; the signature still covers what was signed,
variants included.
"""

from __future__ import annotations

from dataclasses import replace
from functools import cache

from edgefleet.agent import hardware as probing
from edgefleet.common import hwclass
from edgefleet.common import types as t

DECODED_DIGEST = "decoded_model_digest"  # the default model's decoded digest (packed releases)


def holds(requirement: str, hw: t.Hardware) -> bool:
    """Whether ``requirement`` holds on ``hw`` (unknown forms do not)."""
    return hwclass.holds(requirement, hw)


def choose(manifest: t.Manifest, hw: t.Hardware) -> t.Variant | None:
    """The variant measured fastest on ``hw``'s class (``Manifest.preferences``) when it fits,
    else the first of ``manifest``'s variants whose requirements all hold (None: the
    default); ``hwclass.choose``."""
    return hwclass.choose(manifest, hw)


def apply(manifest: t.Manifest, variant: t.Variant | None) -> t.Manifest:
    """``manifest`` with ``variant``'s model and providers as its own (unchanged for None)."""
    if variant is None:
        return manifest
    annotations = {k: v for k, v in manifest.annotations.items() if k != DECODED_DIGEST}
    if variant.golden_digest:  # its own expectations: its outputs, not the default model's
        manifest = replace(
            manifest, golden_digest=variant.golden_digest, golden_size=variant.golden_size
        )
    return replace(
        manifest,
        model_digest=variant.model_digest,
        model_size=variant.model_size,
        model_encoding=variant.model_encoding,
        model_chunks=(),  # the default blob's chunks: a variant's blob is fetched whole
        providers=variant.providers,
        annotations=annotations,
        variant=variant.name,
    )


@cache
def this_device() -> t.Hardware:
    """This machine's hardware, probed once per process."""
    return probing.probe()


def resolve(manifest: t.Manifest, hw: t.Hardware | None = None) -> t.Manifest:
    """``manifest`` as this device (or ``hw``) runs it: its chosen variant applied."""
    if not manifest.variants:
        return manifest
    return apply(manifest, choose(manifest, hw or this_device()))


def resolve_desired(desired: t.DesiredState) -> t.DesiredState:
    """``desired`` with its manifest resolved (``resolve``)."""
    resolved = resolve(desired.manifest)
    return desired if resolved is desired.manifest else replace(desired, manifest=resolved)
