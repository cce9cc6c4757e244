"""Variant preferences per hardware class (``Manifest.preferences``, from ``release create
--profile-on``): a device of the measured class runs the measured variant (or the default),
another class keeps the first-fit rule, and the preferences round-trip and are bounded on the
wire."""

from __future__ import annotations

import dataclasses

import pytest

from edgefleet.agent import variants
from edgefleet.common import digests, hwclass, wire
from edgefleet.common import types as t
from edgefleet.common.errors import MalformedMessageError

VNNI = t.Hardware(arch="x86_64", cpu_features=("avx2", "vnni"))
VNNI_GPU = t.Hardware(arch="x86_64", cpu_features=("avx2", "vnni"), gpus=(t.Gpu("A2"),))
PLAIN = t.Hardware(arch="x86_64", cpu_features=("avx2",))


def _variant(name: str, *requires: str) -> t.Variant:
    data = name.encode()
    return t.Variant(name, digests.of_bytes(data), len(data), requires=tuple(requires))


FP16 = _variant("fp16", "gpu")
INT8 = _variant("int8", "cpu:vnni")
X86 = _variant("x86", "arch:x86_64")


def _manifest(*prefs: t.VariantPreference) -> t.Manifest:
    return t.Manifest(
        "m",
        "1.0.0",
        "sha256:00",
        1,
        (t.TensorSpec("x", "float32", (1,)),),
        (),
        variants=(FP16, INT8, X86),
        preferences=prefs,
    )


def test_the_class_is_the_arch_and_the_requirements_that_hold() -> None:
    m = _manifest()
    assert hwclass.class_of(m, VNNI) == ("x86_64", ("arch:x86_64", "cpu:vnni"))
    assert hwclass.class_of(m, VNNI_GPU) == ("x86_64", ("arch:x86_64", "cpu:vnni", "gpu"))
    assert hwclass.class_of(m, PLAIN) == ("x86_64", ("arch:x86_64",))


def test_a_device_of_the_measured_class_runs_the_measured_variant() -> None:
    measured = t.VariantPreference("x86_64", ("arch:x86_64", "cpu:vnni"), "x86", "dev-1")
    m = _manifest(measured)
    assert variants.choose(m, VNNI) == X86  # first fit would be int8
    assert variants.choose(m, VNNI_GPU) == FP16  # another class (it has a GPU): first fit
    assert variants.choose(m, PLAIN) == X86  # first fit
    assert variants.resolve(m, VNNI).variant == "x86"


def test_a_measured_default_wins_over_every_variant_of_the_class() -> None:
    m = _manifest(t.VariantPreference("x86_64", ("arch:x86_64", "cpu:vnni"), ""))
    assert variants.choose(m, VNNI) is None
    assert variants.resolve(m, VNNI) == m  # the default model, unchanged


def test_a_preferred_variant_that_does_not_fit_falls_back_to_first_fit() -> None:
    # a preference whose variant's requirements do not hold on the device (a hand-made one)
    m = _manifest(t.VariantPreference("x86_64", ("arch:x86_64",), "int8"))
    assert variants.choose(m, PLAIN) == X86


def test_preferences_round_trip_and_bad_ones_are_refused() -> None:
    timings = (t.VariantTiming("", 1.25, "CPUExecutionProvider"), t.VariantTiming("x86", 0.5))
    pref = t.VariantPreference("x86_64", ("arch:x86_64",), "x86", "dev-1", timings)
    m = _manifest(pref)
    assert wire.decode_manifest(wire.encode_manifest(m)).preferences == (pref,)
    for bad in (
        dataclasses.replace(pref, variant="nope"),  # names no variant of the release
        dataclasses.replace(pref, arch="x" * 100),
        dataclasses.replace(pref, timings=(t.VariantTiming("a\n", 1.0),)),
    ):
        with pytest.raises(MalformedMessageError):
            wire.decode_manifest(wire.encode_manifest(_manifest(bad)))
    with pytest.raises(MalformedMessageError, match="at most"):
        wire.decode_manifest(wire.encode_manifest(_manifest(*[pref] * (wire.MAX_VARIANTS + 1))))
