"""What this device is: CPU, memory, GPUs and ONNX Runtime's providers, probed once at start.

The status carries it (``DeviceStatus.hardware``) so an operator sees what a device can do and
a release can be matched to it. CPU features are the ones int8 and fp16 kernels depend on, in
our words: x86 ``avx2``, ``avx512`` (avx512f), ``vnni`` (avx512_vnni or avx_vnni); Arm
``dotprod`` (asimddp) and ``fp16`` (asimdhp). GPUs come from the NVIDIA driver's
``/proc/driver/nvidia/gpus/*/information`` (``nvidia-smi`` for their memory where it is
installed), or on a Jetson from the device tree and ``/etc/nv_tegra_release`` (its GPU shares
the CPU's memory: 0). Every probe is best-effort: what cannot be read is left out.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

import onnxruntime as ort

from edgefleet.common import types as t

log = logging.getLogger(__name__)

# /proc/cpuinfo flag -> our name (several flags may give one name)
_X86_FEATURES = {
    "avx2": "avx2",
    "avx512f": "avx512",
    "avx512_vnni": "vnni",
    "avx_vnni": "vnni",
    "f16c": "f16c",
    "amx_int8": "amx",
}
_ARM_FEATURES = {
    "asimddp": "dotprod",
    "asimdhp": "fp16",
    "i8mm": "i8mm",
    "sve": "sve",
    "neon": "neon",
    "asimd": "neon",
}
_ORDER = ("avx2", "avx512", "vnni", "amx", "f16c", "neon", "dotprod", "fp16", "i8mm", "sve")


def cpu_features(cpuinfo: str) -> tuple[str, ...]:
    """The int8/fp16-relevant features a ``/proc/cpuinfo`` text names (x86 ``flags``, Arm
    ``Features``), in a fixed order; those of the first processor (they are all alike)."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip().lower()
        if not sep or key not in ("flags", "features"):
            continue
        names = _X86_FEATURES if key == "flags" else _ARM_FEATURES
        found = {names[f] for f in value.split() if f in names}
        return tuple(f for f in _ORDER if f in found)
    return ()


def memory_bytes(meminfo: str) -> int:
    """``MemTotal`` of a ``/proc/meminfo`` text, in bytes (0 when it is not there)."""
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1]) * 1024
    return 0


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def board(root: Path = Path("/")) -> str:
    """The board's model from the device tree ("NVIDIA Jetson Orin Nano Developer Kit",
    "Raspberry Pi 5 Model B Rev 1.0"); "" on a machine without one."""
    return _read(root / "proc/device-tree/model").replace("\x00", "").strip()


def nvidia_gpus(root: Path = Path("/")) -> tuple[t.Gpu, ...]:
    """GPUs the NVIDIA driver knows (names from /proc, memory from ``nvidia-smi`` if it is
    installed), or a Jetson's integrated GPU; () where there is none."""
    names = []
    for info in sorted((root / "proc/driver/nvidia/gpus").glob("*/information")):
        for line in _read(info).splitlines():
            if line.startswith("Model:"):
                names.append(line.partition(":")[2].strip())
    sized = _nvidia_smi() if names and root == Path("/") else []
    if sized and len(sized) == len(names):
        return tuple(sized)
    if names:
        return tuple(t.Gpu(n) for n in names)
    tegra = _read(root / "etc/nv_tegra_release")
    if tegra:
        release = tegra.splitlines()[0].lstrip("# ").split(",")[0] if tegra.strip() else ""
        model = board(root) or "NVIDIA Jetson"
        return (t.Gpu(f"{model} integrated GPU ({release})" if release else model),)
    return ()


def _nvidia_smi() -> list[t.Gpu]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        log.info("nvidia-smi did not answer: %s", exc)
        return []
    gpus = []
    for line in out.splitlines():
        name, _, mib = line.rpartition(",")
        if name and mib.strip().isdigit():
            gpus.append(t.Gpu(name.strip(), int(mib.strip()) * 1024 * 1024))
    return gpus


def available_providers() -> tuple[str, ...]:
    """ONNX Runtime's available execution providers, in its own order of preference."""
    return tuple(ort.get_available_providers())


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 0


def probe(root: Path = Path("/"), *, providers: Iterable[str] | None = None) -> t.Hardware:
    """This machine's hardware (``root``: where /proc and /etc are, for tests)."""
    return t.Hardware(
        arch=platform.machine(),
        cpu_features=cpu_features(_read(root / "proc/cpuinfo")),
        cores=_cores(),
        memory_bytes=memory_bytes(_read(root / "proc/meminfo")),
        gpus=nvidia_gpus(root),
        providers=tuple(providers) if providers is not None else available_providers(),
        board=board(root),
        onnxruntime_version=ort.__version__,
    )
