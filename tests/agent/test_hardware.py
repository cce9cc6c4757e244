"""The agent's hardware probe: /proc texts as fixtures, and this machine for real."""

from __future__ import annotations

import platform
from collections.abc import Callable
from pathlib import Path

import pytest

from edgefleet.agent import hardware
from edgefleet.common import types as t
from edgefleet.common import wire
from edgefleet.common.errors import MalformedMessageError
from edgefleet.v1 import mqtt_pb2

# the flags line of a Cascade Lake Xeon (AVX-512 with VNNI), cut to what matters around it
XEON = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz
flags\t\t: fpu vme sse sse2 ssse3 fma sse4_1 sse4_2 f16c avx avx2 avx512f avx512dq avx512bw \
avx512vl avx512_vnni
processor\t: 1
flags\t\t: fpu vme sse sse2
"""
# a Haswell laptop: AVX2, no VNNI (the fresh AVX2-only machine)
HASWELL = "processor\t: 0\nflags\t\t: fpu sse2 fma avx avx2 f16c\n"
# Alder Lake: AVX-VNNI without AVX-512
ALDER = "processor : 0\nflags : sse2 avx avx2 avx_vnni\n"
# Jetson Orin (Cortex-A78AE): dot product and fp16
ORIN = """processor\t: 0
BogoMIPS\t: 62.50
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm \
lrcpc dcpop asimddp uscat ilrcpc flagm paca pacg
CPU implementer\t: 0x41
"""
# Raspberry Pi 4 (Cortex-A72): NEON only
PI4 = "processor\t: 0\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"


@pytest.mark.parametrize(
    ("cpuinfo", "features"),
    [
        (XEON, ("avx2", "avx512", "vnni", "f16c")),
        (HASWELL, ("avx2", "f16c")),
        (ALDER, ("avx2", "vnni")),
        (ORIN, ("neon", "dotprod", "fp16")),
        (PI4, ("neon",)),
        ("", ()),
    ],
)
def test_cpu_features_are_parsed_from_cpuinfo(cpuinfo: str, features: tuple[str, ...]) -> None:
    assert hardware.cpu_features(cpuinfo) == features


def test_memory_is_memtotal() -> None:
    meminfo = "MemTotal:        7990060 kB\nMemFree:         123 kB\n"
    assert hardware.memory_bytes(meminfo) == 7990060 * 1024
    assert hardware.memory_bytes("MemFree: 1 kB\n") == 0


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_a_jetson_reports_its_board_and_integrated_gpu(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "proc/device-tree/model": "NVIDIA Jetson Orin Nano Developer Kit\x00",
            "etc/nv_tegra_release": "# R36 (release), REVISION: 3.0, GCID: 36923193, BOARD: ...\n",
            "proc/cpuinfo": ORIN,
            "proc/meminfo": "MemTotal: 7990060 kB\n",
        },
    )
    h = hardware.probe(root, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert h.board == "NVIDIA Jetson Orin Nano Developer Kit"
    assert h.gpus == (
        t.Gpu("NVIDIA Jetson Orin Nano Developer Kit integrated GPU (R36 (release))"),
    )
    assert h.cpu_features == ("neon", "dotprod", "fp16")
    assert h.memory_bytes == 7990060 * 1024
    assert h.providers == ("CUDAExecutionProvider", "CPUExecutionProvider")


def test_nvidia_driver_gpus_are_named(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "proc/driver/nvidia/gpus/0000:01:00.0/information": "Model: \t\t NVIDIA H200\nIRQ: 1\n",
        },
    )
    assert hardware.nvidia_gpus(root) == (t.Gpu("NVIDIA H200"),)
    assert hardware.nvidia_gpus(tmp_path / "nothing") == ()


def test_this_machine_reports_sane_hardware() -> None:
    h = hardware.probe()
    assert h.arch == platform.machine() and h.arch in {"x86_64", "aarch64", "armv7l"}
    assert h.cores > 0
    assert h.memory_bytes > 2**26
    assert "CPUExecutionProvider" in h.providers
    assert h.onnxruntime_version
    assert set(h.cpu_features) <= {
        "avx2", "avx512", "vnni", "amx", "f16c", "neon", "dotprod", "fp16", "i8mm", "sve"
    }  # fmt: skip
    status = t.DeviceStatus(device_id="d1", fleet="f", phase=t.InstallPhase.IDLE, hardware=h)
    assert wire.decode_status(wire.status_to_pb(status).SerializeToString()) == status


def test_a_hostile_hardware_report_is_refused() -> None:
    h = t.Hardware(arch="x86_64", cores=2)
    base = wire.status_to_pb(
        t.DeviceStatus(device_id="d1", fleet="f", phase=t.InstallPhase.IDLE, hardware=h)
    )
    cases: list[tuple[Callable[[mqtt_pb2.DeviceStatus], object], str]] = [
        (lambda m: m.hardware.cpu_features.extend(["x"] * 17), "17 CPU features"),
        (lambda m: setattr(m.hardware, "arch", "x" * 33), "arch of 33 bytes"),
        (lambda m: m.hardware.gpus.add(name="G\x1b[2J"), "control character"),
        (lambda m: m.hardware.providers.append("CPU Provider; rm"), "not a provider name"),
        (lambda m: setattr(m, "active_provider", "a" * 65), "not a provider name"),
        (lambda m: setattr(m.hardware, "memory_bytes", 2**63), "out of range"),
    ]
    for mutate, match in cases:
        msg = mqtt_pb2.DeviceStatus()
        msg.CopyFrom(base)
        mutate(msg)
        with pytest.raises(MalformedMessageError, match=match):
            wire.decode_status(msg.SerializeToString())


def test_an_honest_report_is_cut_to_fit() -> None:
    h = t.Hardware(arch="x86_64", gpus=(t.Gpu("G\tpu " * 60),), board="B\x00" * 100)
    status = t.DeviceStatus(device_id="d1", fleet="f", phase=t.InstallPhase.IDLE, hardware=h)
    back = wire.decode_status(wire.status_to_pb(status).SerializeToString())
    assert back.hardware is not None and len(back.hardware.gpus[0].name.encode()) <= 128
