"""``edgectl release export`` and ``push`` against a real controller and a real registry."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from typer.testing import CliRunner

from edgefleet.common import digests, oci, signing
from edgefleet.edgectl import oci_layout as layout
from edgefleet.edgectl.app import app
from tests.conftest import free_port
from tests.edgectl.conftest import Edgectl, controller, edgectl, mtls_stack, one_error_line
from tests.oci.conftest import Registry

__all__ = ["controller", "edgectl", "mtls_stack"]  # fixtures, re-used from the edgectl tests


def released(edgectl: Edgectl, model: Path, tmp_path: Path) -> tuple[str, signing.TrustStore]:
    assert edgectl("keys", "init", "--out", tmp_path / "trusted.pem").exit_code == 0
    name = f"digits-{uuid.uuid4().hex[:8]}"
    assert edgectl("model", "add", model, "--name", name).exit_code == 0
    created = edgectl("release", "create", name, "--version", "1.2.0+b7")
    assert created.exit_code == 0, created.stderr
    return f"{name}:1.2.0+b7", signing.TrustStore.from_pem_files([tmp_path / "trusted.pem"])


def test_help() -> None:
    for command in ("export", "push"):
        result = CliRunner().invoke(app, ["release", command, "--help"])
        assert result.exit_code == 0
        assert "OCI" in result.stdout


def test_export_then_push(
    edgectl: Edgectl, digits_model_path: Path, tmp_path: Path, registry: Registry
) -> None:
    release, trust = released(edgectl, digits_model_path, tmp_path)
    out = tmp_path / "layout"
    exported = edgectl("release", "export", release, "--oci", out, "--json")
    assert exported.exit_code == 0, exported.stderr
    info = json.loads(exported.stdout)
    back = layout.read_layout(out, trust=trust)
    assert info["manifest_digest"] == back.manifest_digest
    assert back.tag == "1.2.0_b7"
    assert back.blob(back.manifest.model_digest).read_bytes() == digits_model_path.read_bytes()

    again = json.loads(edgectl("release", "export", release, "--oci", out, "--json").stdout)
    assert again["manifest_digest"] == back.manifest_digest

    repo = f"{registry.host}/edgefleet/{release.split(':')[0]}"
    pushed = edgectl("release", "push", release, "--to", repo, "--json")
    assert pushed.exit_code == 0, pushed.stderr
    first = json.loads(pushed.stdout)
    assert first["manifest_digest"] == back.manifest_digest
    assert first["blobs_uploaded"] == 3  # config, signed manifest, model (no golden)
    second = json.loads(edgectl("release", "push", release, "--to", f"{repo}:v1", "--json").stdout)
    assert second["blobs_uploaded"] == 0
    assert second["pushed"].endswith(":v1")

    target = oci.Registry(oci.RegistryRef.parse(repo))
    for tag in ("1.2.0_b7", "v1"):
        assert digests.of_bytes(target.get_manifest(tag)) == back.manifest_digest


def test_push_unknown_release(edgectl: Edgectl, registry: Registry) -> None:
    line = one_error_line(edgectl("release", "push", "ghost:1.0.0", "--to", f"{registry.host}/x"))
    assert line == "error: unknown release: ghost:1.0.0"


def test_push_to_a_registry_that_is_down(
    edgectl: Edgectl, digits_model_path: Path, tmp_path: Path
) -> None:
    release, _ = released(edgectl, digits_model_path, tmp_path)
    port = free_port()
    line = one_error_line(edgectl("release", "push", release, "--to", f"127.0.0.1:{port}/x"))
    assert line.startswith(f"error: cannot reach registry at 127.0.0.1:{port}: ")


def test_push_to_a_bad_reference(edgectl: Edgectl) -> None:
    line = one_error_line(edgectl("release", "push", "a:1.0.0", "--to", "no-repo"))
    assert "HOST[:PORT]/REPO[:TAG]" in line
