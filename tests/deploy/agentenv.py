"""A device's environment: this checkout's wheel installed with pip into a fresh venv.

``agent_venv()`` builds the project's wheel, then a venv with ``pip install WHEEL[EXTRAS]`` as a
device would run it (from PyPI, or this machine's pip settings). The venv is cached, keyed by
the wheel's dependency list (and the extras, this Python): a later call with the same list only
reinstalls the wheel itself (``--no-deps``), so the code is this checkout's and it stays fast.
Cached under /var/cache/edgefleet where writable, else ~/.cache/edgefleet. Used by
tests/deploy/test_small_agent.py, tests/deploy/test_device_providers.py (the ``openvino`` and
``gpu`` flavours) and bench/footprint.py.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PIP = ["-m", "pip", "-q", "--disable-pip-version-check"]


def cache_root() -> Path:
    for root in (Path("/var/cache/edgefleet"), Path.home() / ".cache" / "edgefleet"):
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(root, os.W_OK):
            return root
    return Path(tempfile.gettempdir()) / "edgefleet-cache"


def _run(args: list[str], what: str) -> None:
    result = subprocess.run(args, capture_output=True, text=True, timeout=900, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"{what} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )


def build_wheel(out: Path) -> Path:
    """The project's wheel from this checkout (pip wheel, its build backend from the index)."""
    _run([sys.executable, *PIP, "wheel", "--no-deps", "-w", str(out), str(REPO)], "pip wheel")
    (wheel,) = out.glob("edgefleet-*.whl")
    return wheel


def requires(wheel: Path) -> list[str]:
    """The wheel's ``Requires-Dist`` lines, as its METADATA says them."""
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(z.read(name).decode())
    return sorted(meta.get_all("Requires-Dist") or [])


def agent_venv(extras: str = "") -> Path:
    """A venv with this checkout's wheel and ``extras``, its root: "" (none), or an ONNX
    Runtime flavour as a device installs it: "cpu", "openvino" (onnxruntime-openvino), "gpu"
    (onnxruntime-gpu, without the CUDA libraries: here it lists CUDA, which does not start)."""
    with tempfile.TemporaryDirectory(prefix="edgefleet-wheel-") as tmp:
        wheel = build_wheel(Path(tmp))
        text = "\n".join([sys.version, extras, *requires(wheel)])
        key = hashlib.sha256(text.encode()).hexdigest()[:12]
        root = cache_root() / f"agent-venv-{extras or 'base'}-{key}"
        python = str(root / "bin" / "python")
        if not (root / ".complete").exists():
            shutil.rmtree(root, ignore_errors=True)
            _run([sys.executable, "-m", "venv", str(root)], "python -m venv")
            target = f"{wheel}[{extras}]" if extras else str(wheel)
            _run([python, *PIP, "install", "--no-cache-dir", target], f"pip install {target}")
            (root / ".complete").write_text(text)
        else:  # the same dependencies: only this checkout's code again
            _run(
                [python, *PIP, "install", "--no-deps", "--force-reinstall", str(wheel)],
                "pip install --no-deps",
            )
    return root


def agent_venv_or_skip(extras: str = "") -> Path:
    """``agent_venv(extras)``, or the test skipped, saying so, where pip reaches no index."""
    try:
        return agent_venv(extras)
    except RuntimeError as exc:
        if "No matching distribution" in str(exc) or "connection" in str(exc).lower():
            pytest.skip(f"pip cannot reach a package index: {str(exc)[-300:]}")
        raise


def site_packages(root: Path) -> Path:
    (found,) = (root / "lib").glob("python3*/site-packages")
    return found


def installed(root: Path) -> set[str]:
    """The distributions installed in the venv (canonical names)."""
    names = set()
    for info in site_packages(root).glob("*.dist-info"):
        meta = Parser().parsestr((info / "METADATA").read_text(errors="replace"))
        names.add(str(meta["Name"]).lower().replace("_", "-"))
    return names


VENV_TOOLS = ("pip", "setuptools", "pkg_resources", "_distutils_hack", "distutils-precedence")


def size_mb(root: Path, *, without: tuple[str, ...] = VENV_TOOLS) -> float:
    """Megabytes of files under the venv's site-packages, less what ``python -m venv`` put
    there itself (pip, setuptools)."""
    total = 0
    for path in site_packages(root).rglob("*"):
        top = path.relative_to(site_packages(root)).parts[0].lower()
        tool = any(top == w or top.startswith((f"{w}-", f"{w}.")) for w in without)
        if path.is_file() and not tool:
            total += path.stat().st_size
    return total / 1e6
