"""``edgectl --help`` loads only what printing the help needs: not grpc, numpy or rich, which
would more than double its start-up (bench/footprint.py measures ``cli_help_s``), nor the
generated protobuf modules, the domain types or matplotlib, which the commands load when they
run. ``model compress --help`` still lists the words of controller.proto's ``Objective``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

CODE = """
import json, sys
from edgefleet.edgectl.app import main
sys.argv = ["edgectl", "--help"]
try:
    main()
except SystemExit as exc:
    code = exc.code
heavy = (
    "grpc",
    "numpy",
    "rich",
    "onnxruntime",
    "sqlalchemy",
    "google.protobuf",
    "edgefleet.v1.controller_pb2",
    "edgefleet.common.types",
    "matplotlib",
)
print(json.dumps({"code": code, "loaded": [m for m in heavy if m in sys.modules]}))
"""


def test_help_imports_no_grpc_numpy_rich_or_protobuf() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CODE], capture_output=True, text=True, check=True, timeout=60
    )
    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert "Usage: edgectl" in out.stdout
    assert last == {"code": 0, "loaded": []}


def test_compress_help_lists_the_objective_words() -> None:
    from edgefleet.common import enumwords

    out = subprocess.run(
        [sys.executable, "-m", "edgefleet.edgectl", "model", "compress", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "100", "EDGECTL_CONFIG": os.devnull},
    )
    assert "--objective " + "|".join(enumwords.objective_words()) in out.stdout
