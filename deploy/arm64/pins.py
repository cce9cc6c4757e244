"""Print the pinned requirements an aarch64 agent needs: the project's dependencies (what
``pip install edgefleet`` installs) with ONNX Runtime (the ``cpu`` extra) and everything they
pull in, each at the version the given venv runs, so the arm64 root filesystem runs the same
ONNX Runtime, NumPy and gRPC as the x86 host it is compared to.

Markers are evaluated for Linux on aarch64 with this interpreter's Python. Run by
deploy/arm64/rootfs.sh with the venv's python; reads pyproject.toml from the working directory.
"""

from __future__ import annotations

import sys
import tomllib
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def closure(roots: list[str]) -> dict[str, str]:
    """Each requirement reachable from ``roots`` (for aarch64 Linux) -> its installed version."""
    env = {**default_environment(), "platform_machine": "aarch64", "sys_platform": "linux"}
    pins: dict[str, str] = {}
    todo = [Requirement(r) for r in roots]
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({**env, "extra": ""}):
            continue
        name = canonicalize_name(req.name)
        if name in pins:
            continue
        try:
            dist = distribution(req.name)
        except PackageNotFoundError:
            sys.exit(f"pins: {req.name} is not installed in {sys.prefix}")
        pins[name] = dist.version
        todo.extend(Requirement(r) for r in dist.requires or [])
    return pins


def main() -> None:
    """Print ``name==version`` lines, sorted."""
    project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
    roots = [*project["dependencies"], *project["optional-dependencies"]["cpu"]]
    for name, version in sorted(closure(roots).items()):
        print(f"{name}=={version}")


if __name__ == "__main__":
    main()
