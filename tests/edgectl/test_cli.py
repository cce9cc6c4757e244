"""edgectl against a real controller: help, one-line errors, JSON output, keys, models, releases."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgefleet.edgectl.app import app
from tests.conftest import free_port
from tests.edgectl.conftest import Edgectl, one_error_line

COMMANDS = (
    "keys", "model", "release", "deploy", "devices", "events", "predict", "operator", "audit",
    "demo",
)  # fmt: skip


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_help_lists_every_command() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in COMMANDS:
        assert f"  {name} " in result.stdout, name
    assert "EDGECTL_CONTROLLER" in result.stdout


@pytest.mark.parametrize(
    ("group", "subcommands"),
    [("keys", ["init", "list"]), ("model", ["add", "list"]), ("release", ["create", "list"]),
     ("devices", ["list"]), ("operator", ["add", "list", "revoke", "whoami"])],
)  # fmt: skip
def test_group_help_lists_its_commands(group: str, subcommands: list[str]) -> None:
    result = CliRunner().invoke(app, [group, "--help"])
    assert result.exit_code == 0
    for sub in subcommands:
        assert f"  {sub} " in result.stdout


@pytest.mark.parametrize("command", ["deploy", "events", "predict", "audit", "demo"])
def test_command_help(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert "Usage: " in result.stdout


def test_unreachable_controller_is_one_line() -> None:
    address = f"127.0.0.1:{free_port()}"
    result = CliRunner().invoke(app, ["--controller", address, "keys", "list"])
    line = one_error_line(result)
    assert line.startswith(f"error: cannot reach controller at {address}")
    assert result.stdout == ""


def test_controller_from_environment(edgectl: Edgectl) -> None:
    result = edgectl.runner.invoke(
        app, ["keys", "list", "--json"], env={"EDGECTL_CONTROLLER": edgectl.address}
    )
    assert result.exit_code == 0, result.stderr
    assert isinstance(json.loads(result.stdout), list)


def test_usage_error_is_one_line() -> None:
    line = one_error_line(CliRunner().invoke(app, ["deploy", "digits:1.0.0"]))
    assert "--fleet" in line


def test_keys_init_writes_the_public_key(edgectl: Edgectl, tmp_path: Path) -> None:
    out = tmp_path / "trusted.pem"
    first = edgectl("keys", "init", "--out", out, "--json")
    assert first.exit_code == 0, first.stderr
    key = json.loads(first.stdout)
    assert out.read_text() == key["public_key_pem"]
    assert out.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    again = json.loads(edgectl("keys", "init", "--json").stdout)
    assert again["key_id"] == key["key_id"]
    assert again["created"] is False
    listed = json.loads(edgectl("keys", "list", "--json").stdout)
    assert key["key_id"] in {k["key_id"] for k in listed if k["active"]}


def test_model_add_of_a_file_that_is_not_onnx(edgectl: Edgectl, tmp_path: Path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"this is not a model\n" * 100)
    line = one_error_line(edgectl("model", "add", bad, "--name", unique("bad")))
    assert "onnx" in line.lower()


def test_model_add_of_a_missing_file(edgectl: Edgectl, tmp_path: Path) -> None:
    line = one_error_line(edgectl("model", "add", tmp_path / "nope.onnx", "--name", "x"))
    assert "nope.onnx" in line


def test_model_release_flow_and_json(edgectl: Edgectl, digits_model_path: Path) -> None:
    assert edgectl("keys", "init").exit_code == 0
    name = unique("digits")
    added = edgectl("model", "add", digits_model_path, "--name", name, "--json")
    assert added.exit_code == 0, added.stderr
    model = json.loads(added.stdout)
    assert (model["name"], model["version"]) == (name, 1)
    assert [i["name"] for i in model["inputs"]] == ["pixels"]
    assert {o["name"] for o in model["outputs"]} == {"probabilities", "label"}

    models = json.loads(edgectl("model", "list", "--name", name, "--json").stdout)
    assert [(m["name"], m["version"]) for m in models] == [(name, 1)]

    created = edgectl(
        "release", "create", name, "--version", "1.0.0", "--latency-budget-ms", "50", "--json"
    )
    assert created.exit_code == 0, created.stderr
    release = json.loads(created.stdout)
    assert release["release"] == f"{name}:1.0.0"
    assert release["model_version"] == 1
    assert release["latency_budget_ms"] == 50

    releases = json.loads(edgectl("release", "list", "--name", name, "--json").stdout)
    assert [r["release"] for r in releases] == [f"{name}:1.0.0"]
    human = edgectl("release", "list", "--name", name)
    assert human.exit_code == 0 and f"{name}:1.0.0" in human.stdout.replace("\n", "")

    duplicate = one_error_line(edgectl("release", "create", name, "--version", "1.0.0"))
    assert "1.0.0" in duplicate

    unknown = one_error_line(edgectl("deploy", f"{name}:1.0.0", "--fleet", "factory-zz"))
    assert unknown == "error: unknown fleet: factory-zz"


def test_release_of_an_unknown_model(edgectl: Edgectl) -> None:
    line = one_error_line(edgectl("release", "create", unique("ghost"), "--version", "1.0.0"))
    assert "ghost" in line


def test_release_with_a_bad_version(edgectl: Edgectl) -> None:
    line = one_error_line(edgectl("release", "create", "digits", "--version", "1.0"))
    assert "semver" in line


def test_deploy_of_a_malformed_release(edgectl: Edgectl) -> None:
    line = one_error_line(edgectl("deploy", "digits", "--fleet", "factory-a"))
    assert "NAME:VERSION" in line


def test_listings_as_json(edgectl: Edgectl) -> None:
    for args in (("keys", "list"), ("model", "list"), ("release", "list"), ("devices", "list"),
                 ("events",), ("events", "--fleet", "factory-a", "--limit", "5")):  # fmt: skip
        result = edgectl(*args, "--json")
        assert result.exit_code == 0, (args, result.stderr)
        assert isinstance(json.loads(result.stdout), list), args


def test_events_device_and_fleet_exclude_each_other(edgectl: Edgectl) -> None:
    line = one_error_line(edgectl("events", "--device", "a", "--fleet", "b"))
    assert "not both" in line


def test_predict_on_an_unknown_device(edgectl: Edgectl, tmp_path: Path) -> None:
    npz = tmp_path / "x.npz"
    np.savez(npz, pixels=np.zeros((1, 64), np.float32))
    line = one_error_line(edgectl("predict", "--device", "edge-nowhere", "--input", npz))
    assert line == "error: unknown device: edge-nowhere"


def test_predict_with_an_input_that_is_not_npz(edgectl: Edgectl, tmp_path: Path) -> None:
    bad = tmp_path / "x.npz"
    bad.write_text("nope")
    line = one_error_line(edgectl("predict", "--device", "edge-a1", "--input", bad))
    assert "npz" in line
