"""The generated protobuf code in the tree must be what `make proto` produces now."""

from __future__ import annotations

import filecmp
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "proto"


def test_generated_code_is_fresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    protoc = pytest.importorskip("grpc_tools.protoc")
    venv_bin = str(Path(sys.executable).parent)
    monkeypatch.setenv("PATH", venv_bin + ":" + __import__("os").environ.get("PATH", ""))
    if shutil.which("protoc-gen-mypy") is None:
        pytest.fail("protoc-gen-mypy missing: install the dev extra (mypy-protobuf)")
    sources = sorted(
        str(p.relative_to(PROTO)) for p in (PROTO / "edgefleet" / "v1").glob("*.proto")
    )
    args = [
        "protoc",
        f"-I{PROTO}",
        f"--python_out={tmp_path}",
        f"--grpc_python_out={tmp_path}",
        f"--mypy_out={tmp_path}",
        f"--mypy_grpc_out={tmp_path}",
        *sources,
    ]
    monkeypatch.chdir(PROTO)
    assert protoc.main(args) == 0
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert generated, "protoc produced nothing"
    stale = [str(p) for p in generated if not filecmp.cmp(tmp_path / p, PROTO / p, shallow=False)]
    assert not stale, f"generated code is stale, run `make proto`: {stale}"
    in_tree = {p.relative_to(PROTO) for p in (PROTO / "edgefleet" / "v1").glob("*_pb2*.py*")}
    assert in_tree == set(generated), "generated files without a .proto (or the reverse)"
