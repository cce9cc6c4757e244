"""Fixture sysfs trees laid out as on the real boards, built under a test's ``tmp_path``.

Each builder writes the files a reader looks at, with the names, units and neighbours the
kernel gives them (values are plausible readings, chosen so sums are easy to check):

Jetson Nano, JetPack 4 (L4T 32.x, downstream ``ina3221x`` IIO driver, bus 6 address 0x40)::

    sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0/
        rail_name_0 POM_5V_IN   in_power0_input 3000 (mW)  in_current0_input  in_voltage0_input
        rail_name_1 POM_5V_GPU  in_power1_input  500
        rail_name_2 POM_5V_CPU  in_power2_input 1000

Jetson Xavier NX, JetPack 4 (bus 7): rails VDD_IN, VDD_CPU_GPU_CV, VDD_SOC.
Jetson AGX Xavier, JetPack 4: two monitors, no total rail::

    sys/bus/i2c/drivers/ina3221x/1-0040/iio:device0/  GPU CPU SOC
    sys/bus/i2c/drivers/ina3221x/1-0041/iio:device1/  CV VDDRQ SYS5V

Jetson Orin Nano / Orin NX, JetPack 5/6 (L4T 35/36, upstream ``ina3221`` hwmon driver)::

    sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon1/
        name ina3221
        in1_label VDD_IN          in1_input 5000 (mV)  curr1_input 1200 (mA)
        in2_label VDD_CPU_GPU_CV  in2_input 5000       curr2_input  400
        in3_label VDD_SOC         in3_input 5000       curr3_input  300
        in4_input..in7_input      shunt voltages (must not be read as rails)
        curr1_crit, curr1_max ... limits
    sys/class/hwmon/hwmon1 -> ../../bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon1

Jetson AGX Orin, JetPack 5/6: 1-0040 (VDD_GPU_SOC, VDD_CPU_CV, VIN_SYS_5V0) and 1-0041
(NC, VDDQ_VDD2_1V8AO, NC); no total rail, ``NC`` channels are unconnected.

Raspberry Pi 5: ``proc/device-tree/model`` is ``Raspberry Pi 5 Model B Rev 1.0`` plus a NUL;
``vcgencmd pmic_read_adc`` output is ``PI5_PMIC_ADC`` (recorded from a Pi 5).

RAPL, Intel (two sockets; laptop-style ``psys`` and the MMIO interface present too)::

    sys/class/powercap/intel-rapl:0/{name=package-0, energy_uj, max_energy_range_uj}
    sys/class/powercap/intel-rapl:0:0/name core      (also nested under intel-rapl:0/)
    sys/class/powercap/intel-rapl:0:1/name uncore
    sys/class/powercap/intel-rapl:1/name package-1
    sys/class/powercap/intel-rapl:1:0/name dram
    sys/class/powercap/intel-rapl:2/name psys
    sys/class/powercap/intel-rapl-mmio:0/name package-0

RAPL, AMD Zen: ``intel-rapl:0`` named ``package-0`` with subdomain ``intel-rapl:0:0`` (core).

hwmon: ``acpi_power_meter`` with ``device/power1_average`` (older drivers keep attributes
under ``device/``), an ``ina226`` with ``power1_input`` (µW) and a label, and a device with
both ``power1_input`` and ``energy1_input`` (µJ) where only the counter is read.
"""

from __future__ import annotations

import os
from pathlib import Path


def write(root: Path, rel: str, value: str | int) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{value}\n")
    return path


def jetson_jp4(root: Path, device: str, rails: dict[str, int], *, iio: int = 0) -> Path:
    """One ``ina3221x`` monitor: ``rails`` maps rail name to power in mW, channels 0..2."""
    base = f"sys/bus/i2c/drivers/ina3221x/{device}/iio:device{iio}"
    for n, (rail, mw) in enumerate(rails.items()):
        write(root, f"{base}/rail_name_{n}", rail)
        write(root, f"{base}/in_power{n}_input", mw)
        write(root, f"{base}/in_voltage{n}_input", 5000)
        write(root, f"{base}/in_current{n}_input", mw * 1000 // 5000)
        write(root, f"{base}/crit_current_limit_{n}", 4000)
    write(root, f"{base}/name", "ina3221x")
    return root / base


def jetson_nano(root: Path) -> None:
    jetson_jp4(root, "6-0040", {"POM_5V_IN": 3000, "POM_5V_GPU": 500, "POM_5V_CPU": 1000})


def jetson_agx_xavier(root: Path) -> None:
    jetson_jp4(root, "1-0040", {"GPU": 1000, "CPU": 2000, "SOC": 1500})
    jetson_jp4(root, "1-0041", {"CV": 0, "VDDRQ": 500, "SYS5V": 2500}, iio=1)


def jetson_jp5(root: Path, device: str, hwmon: int, rails: list[tuple[str, int, int]]) -> Path:
    """One ``ina3221`` hwmon monitor: ``rails`` are (label, mV, mA) of channels 1..3."""
    rel = f"sys/bus/i2c/drivers/ina3221/{device}/hwmon/hwmon{hwmon}"
    write(root, f"{rel}/name", "ina3221")
    for n, (label, mv, ma) in enumerate(rails, start=1):
        write(root, f"{rel}/in{n}_label", label)
        write(root, f"{rel}/in{n}_input", mv)
        write(root, f"{rel}/curr{n}_input", ma)
        write(root, f"{rel}/in{n}_enable", 1)
        write(root, f"{rel}/curr{n}_crit", 4000)
        write(root, f"{rel}/curr{n}_max", 2500)
        write(root, f"{rel}/in{n + 3}_input", 40)  # shunt voltage of channel n
    write(root, f"{rel}/in7_input", 120)  # sum of shunt voltages
    link = root / f"sys/class/hwmon/hwmon{hwmon}"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(root / rel, link.parent))
    return root / rel


def jetson_orin_nano(root: Path) -> None:
    rails = [("VDD_IN", 5000, 1200), ("VDD_CPU_GPU_CV", 5000, 400), ("VDD_SOC", 5000, 300)]
    jetson_jp5(root, "1-0040", 1, rails)


def jetson_agx_orin(root: Path) -> None:
    jetson_jp5(
        root,
        "1-0040",
        1,
        [("VDD_GPU_SOC", 5000, 800), ("VDD_CPU_CV", 5000, 600), ("VIN_SYS_5V0", 5000, 400)],
    )
    jetson_jp5(root, "1-0041", 2, [("NC", 0, 0), ("VDDQ_VDD2_1V8AO", 5000, 200), ("NC", 0, 0)])


PI5_MODEL = "Raspberry Pi 5 Model B Rev 1.0\x00"
PI5_PMIC_ADC = """\
   3V7_WL_SW_A current(0)=0.00000000A
   3V3_SYS_A current(1)=0.05000000A
   1V8_SYS_A current(2)=0.20000000A
   DDR_VDD2_A current(3)=0.02000000A
   DDR_VDDQ_A current(4)=0.00000000A
   1V1_SYS_A current(5)=0.20000000A
   0V8_SW_A current(6)=0.30000000A
   VDD_CORE_A current(7)=2.00000000A
   3V3_DAC_A current(17)=0.00048840A
   3V3_ADC_A current(18)=0.00024420A
   0V8_AON_A current(16)=0.00537000A
   HDMI_A current(22)=0.02198000A
   3V7_WL_SW_V volt(8)=3.71770200V
   3V3_SYS_V volt(9)=3.30000000V
   1V8_SYS_V volt(10)=1.80000000V
   DDR_VDD2_V volt(11)=1.10000000V
   DDR_VDDQ_V volt(12)=0.60561600V
   1V1_SYS_V volt(13)=1.10000000V
   0V8_SW_V volt(14)=0.80000000V
   VDD_CORE_V volt(15)=0.80000000V
   3V3_DAC_V volt(19)=3.31240800V
   3V3_ADC_V volt(20)=3.30720300V
   0V8_AON_V volt(21)=0.80232300V
   HDMI_V volt(23)=5.14116000V
   EXT5V_V volt(24)=5.12590000V
   BATT_V volt(25)=0.00000000V
"""


def raspberry_pi(root: Path, model: str = PI5_MODEL) -> None:
    (root / "proc/device-tree").mkdir(parents=True, exist_ok=True)
    (root / "proc/device-tree/model").write_text(model)


def rapl_zone(root: Path, zone: str, name: str, *, uj: int = 0, wrap: int = 262143328850) -> Path:
    base = f"sys/class/powercap/{zone}"
    write(root, f"{base}/name", name)
    write(root, f"{base}/energy_uj", uj)
    write(root, f"{base}/max_energy_range_uj", wrap)
    write(root, f"{base}/enabled", 1)
    return root / base / "energy_uj"


def rapl_intel(root: Path) -> dict[str, Path]:
    zones = {
        "package-0": rapl_zone(root, "intel-rapl:0", "package-0", uj=1_000_000),
        "package-1": rapl_zone(root, "intel-rapl:1", "package-1", uj=5_000_000),
    }
    rapl_zone(root, "intel-rapl:0:0", "core", uj=400_000)
    rapl_zone(root, "intel-rapl:0/intel-rapl:0:0", "core", uj=400_000)
    rapl_zone(root, "intel-rapl:0:1", "uncore", uj=100_000)
    rapl_zone(root, "intel-rapl:1:0", "dram", uj=900_000)
    rapl_zone(root, "intel-rapl:2", "psys", uj=9_000_000)
    rapl_zone(root, "intel-rapl-mmio:0", "package-0", uj=1_000_000)
    return zones


def rapl_amd(root: Path) -> Path:
    rapl_zone(root, "intel-rapl:0:0", "core", uj=100)
    return rapl_zone(root, "intel-rapl:0", "package-0", uj=2_000_000, wrap=65532610987)


def hwmon_sensors(root: Path) -> None:
    write(root, "sys/class/hwmon/hwmon0/name", "acpitz")
    write(root, "sys/class/hwmon/hwmon0/temp1_input", 27800)
    write(root, "sys/class/hwmon/hwmon1/name", "power_meter")
    write(root, "sys/class/hwmon/hwmon1/device/power1_average", 7_500_000)
    write(root, "sys/class/hwmon/hwmon1/device/power1_average_interval", 1000)
    write(root, "sys/class/hwmon/hwmon2/name", "ina226")
    write(root, "sys/class/hwmon/hwmon2/power1_input", 2_000_000)
    write(root, "sys/class/hwmon/hwmon2/power1_label", "VDD_MAIN")
    write(root, "sys/class/hwmon/hwmon2/in1_input", 12000)
    write(root, "sys/class/hwmon/hwmon10/name", "pmic")
    write(root, "sys/class/hwmon/hwmon10/power1_input", 900_000)
    write(root, "sys/class/hwmon/hwmon10/energy1_input", 42_000_000)
