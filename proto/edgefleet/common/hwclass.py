"""Which of a release's model variants a device's hardware gets: the rule both sides apply.

A requirement (``Variant.requires``) is one of

    arch:<machine>      ``platform.machine()`` is that (x86_64, aarch64)
    cpu:<feature>       the probed CPU features include it (avx2, avx512, vnni, dotprod, fp16)
    gpu                 a GPU was found
    provider:<name>     this ONNX Runtime offers the execution provider

and one of another form (one a newer controller knows) never holds. A device's **hardware
class** for a release is its arch and, of the requirements the release's variants name, those
that hold on it (``class_of``): two devices of one class cannot be told apart by the release.

``choose``: the variant a class measured fastest (``Manifest.preferences``, from ``release
create --profile-on``) when the device is of that class and the variant's requirements hold;
else the first variant whose requirements all hold; else None (the default model).
"""

from __future__ import annotations

from edgefleet.common import types as t


def holds(requirement: str, hw: t.Hardware) -> bool:
    """Whether ``requirement`` holds on ``hw`` (unknown forms do not)."""
    kind, _, value = requirement.partition(":")
    if kind == "arch":
        return hw.arch == value
    if kind == "cpu":
        return value in hw.cpu_features
    if kind == "provider":
        return value in hw.providers
    return requirement == "gpu" and bool(hw.gpus)


def fits(variant: t.Variant, hw: t.Hardware) -> bool:
    return all(holds(r, hw) for r in variant.requires)


def class_of(manifest: t.Manifest, hw: t.Hardware) -> tuple[str, tuple[str, ...]]:
    """``hw``'s class for ``manifest``: (arch, the variants' requirements that hold, sorted)."""
    named = {r for v in manifest.variants for r in v.requires}
    return hw.arch, tuple(sorted(r for r in named if holds(r, hw)))


def preferred(manifest: t.Manifest, hw: t.Hardware) -> t.VariantPreference | None:
    """The preference measured on ``hw``'s class, if any."""
    arch, have = class_of(manifest, hw)
    for p in manifest.preferences:
        if p.arch == arch and tuple(sorted(p.holds)) == have:
            return p
    return None


def choose(manifest: t.Manifest, hw: t.Hardware) -> t.Variant | None:
    """The variant ``hw`` runs (None: the default model)."""
    pref = preferred(manifest, hw)
    if pref is not None:
        if not pref.variant:
            return None
        for v in manifest.variants:
            if v.name == pref.variant and fits(v, hw):
                return v
    for v in manifest.variants:
        if fits(v, hw):
            return v
    return None
