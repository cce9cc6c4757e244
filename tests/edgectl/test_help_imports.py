"""``edgectl --help`` loads only what printing the help needs: not grpc, numpy or rich, which
would more than double its start-up (bench/footprint.py measures ``cli_help_s``)."""

from __future__ import annotations

import json
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
heavy = ("grpc", "numpy", "rich", "onnxruntime", "sqlalchemy")
print(json.dumps({"code": code, "loaded": [m for m in heavy if m in sys.modules]}))
"""


def test_help_imports_no_grpc_numpy_or_rich() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CODE], capture_output=True, text=True, check=True, timeout=60
    )
    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert "Usage: edgectl" in out.stdout
    assert last == {"code": 0, "loaded": []}
