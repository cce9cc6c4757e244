"""``edgectl model compress --variants`` against a real controller: the models per hardware
class registered from the search's candidates (the winner staying the newest version), the
``release create`` arguments it prints, and a signed release made from them whose variants a
device of each class resolves to."""

from __future__ import annotations

import json
import shlex
import uuid
from pathlib import Path

import numpy as np
import pytest

from edgefleet.agent import variants as agent_variants
from edgefleet.common import types as t
from edgefleet.common import wire
from edgefleet.demo import digits
from tests.edgectl.conftest import Edgectl

FP32 = "prune-structured-30+cluster-5bit+huffman"  # wins --objective size (fp32 arithmetic)


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # the release command is printed on one line


@pytest.fixture
def eval_npz(tmp_path: Path, digits_data: digits.DigitsData) -> Path:
    path = tmp_path / "eval.npz"
    np.savez(path, pixels=digits_data.x_test, labels=digits_data.y_test)
    return path


@pytest.fixture
def model_name(edgectl: Edgectl, digits_model_path: Path) -> str:
    name = f"vdigits-{uuid.uuid4().hex[:8]}"
    added = edgectl("model", "add", digits_model_path, "--name", name)
    assert added.exit_code == 0, added.stderr
    return name


def test_variants_are_registered_and_released(
    edgectl: Edgectl, model_name: str, eval_npz: Path
) -> None:
    result = edgectl(
        "model", "compress", model_name, "--recipe", f"{FP32},int8-dynamic,fp16",
        "--eval-data", eval_npz, "--max-accuracy-drop", "5", "--objective", "size",
        "--time-budget", "0", "--variants", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["winner"] == FP32
    winner = out["model"]["version"]
    assert out["variant_default"]["candidate"] == FP32  # fp32 arithmetic: the default
    assert out["variant_default"]["model"]["version"] == winner
    got = [(v["name"], v["candidate"], v["requires"]) for v in out["variants"]]
    assert got == [
        ("fp16", "fp16", ["gpu"]),
        ("int8-vnni", "int8-dynamic", ["cpu:vnni"]),
        ("int8-dotprod", "int8-dynamic", ["cpu:dotprod"]),
    ]
    fp16, vnni, dotprod = (v["model"] for v in out["variants"])
    assert vnni == dotprod  # one registered version for both instruction sets
    listed = json.loads(edgectl("model", "list", "--name", model_name, "--json").stdout)
    assert [m["version"] for m in listed] == [1, 2, 3, 4]
    assert listed[-1]["version"] == winner  # registered last: `release create` takes it
    assert {fp16["version"], vnni["version"]} == {2, 3}
    assert all(m["parent_version"] == 1 for m in listed[1:])

    assert edgectl("keys", "init").exit_code == 0  # idempotent: the session controller's key
    args = out["release_args"]
    assert args[:2] == ["--model-version", str(winner)]
    created = edgectl(
        "release", "create", model_name, "--version", "1.0.0", *args, "--json"
    )  # fmt: skip
    assert created.exit_code == 0, created.stderr
    release = json.loads(created.stdout)
    assert [v["name"] for v in release["variants"]] == ["fp16", "int8-vnni", "int8-dotprod"]

    with edgectl.client() as client:
        (info,) = client.list_releases(model_name)
    manifest = wire.manifest_from_pb(info.manifest)
    digests = {m["version"]: m["digest"] for m in listed}
    by_name = {v.name: v for v in manifest.variants}
    assert by_name["fp16"].model_digest == digests[fp16["version"]]
    assert by_name["int8-vnni"].model_digest == digests[vnni["version"]]
    assert [p.name for p in by_name["fp16"].providers] == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    # a device of each class resolves the signed manifest to its model
    x86 = t.Hardware("x86_64", cpu_features=("avx2", "vnni"))
    arm = t.Hardware("aarch64", cpu_features=("neon", "dotprod"))
    plain = t.Hardware("x86_64", cpu_features=("avx2",))
    gpu = t.Hardware("aarch64", gpus=(t.Gpu("Orin"),))
    assert agent_variants.resolve(manifest, x86).variant == "int8-vnni"
    assert agent_variants.resolve(manifest, arm).variant == "int8-dotprod"
    assert agent_variants.resolve(manifest, gpu).variant == "fp16"
    assert agent_variants.resolve(manifest, plain) == manifest  # the default: the winner
    assert manifest.model_version == winner


def test_the_table_ends_with_the_release_command(
    edgectl: Edgectl, model_name: str, eval_npz: Path
) -> None:
    result = edgectl(
        "model", "compress", model_name, "--recipe", "int8-dynamic",
        "--eval-data", eval_npz, "--max-accuracy-drop", "5", "--objective", "size",
        "--variants",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "no fp16 variant: the recipe has no fp16 candidate" in result.stderr
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("release them with: ")]
    argv = shlex.split(line.removeprefix("release them with: "))
    assert argv[:5] == ["edgectl", "release", "create", model_name, "--version"]
    # int8-dynamic won (smaller, --objective size): the winner is the int8 variant, and the
    # default is the source version (fp32)
    assert argv[6:8] == ["--model-version", "1"]
    assert argv[8:] == [
        "--variant", f"int8-vnni={model_name}:2@cpu:vnni",
        "--variant", f"int8-dotprod={model_name}:2@cpu:dotprod",
    ]  # fmt: skip
