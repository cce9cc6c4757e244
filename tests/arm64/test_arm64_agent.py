"""The agent on arm64 for real: a Debian bookworm arm64 root filesystem (``debootstrap --arch
arm64``, run through ``qemu-user-static`` and binfmt_misc; deploy/arm64/rootfs.sh, cached), the
agent installed there with pip from the wheel of this checkout, run under emulation against this
machine's broker and controller beside an x86 agent of the same fleet.

The arm64 device enrolls with a one-time token (its key made by aarch64 ``cryptography``),
starts, reports its hardware as aarch64, applies the desired state of a release rolled out to
the fleet through ``edgectl deploy --wait``, and answers a Predict of the digits test set as the
x86 agent does: the same labels, and probabilities within 1e-6 (absolute) of the x86 ones
(not bit-exact: ONNX Runtime's aarch64 and x86-64 kernels round differently; seen: at most
5 ulp apart). Needs root (chroot and mounts); skips with the reason only where the kernel refuses
binfmt_misc or the qemu-aarch64 handler. Slow: emulated Python takes tens of seconds to start.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgefleet.demo import digits
from edgefleet.demo.errors import StartError
from edgefleet.demo.processes import Processes, wait_for_json
from edgefleet.demo.stack import AgentSpec, Controller, start_agents, start_controller
from tests.agent.helpers import Watcher
from tests.conftest import Broker
from tests.e2e.conftest import Cli

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(2400)]

REPO = Path(__file__).resolve().parents[2]
ROOTFS_SH = REPO / "deploy" / "arm64" / "rootfs.sh"
ENTER_SH = REPO / "deploy" / "arm64" / "enter.sh"
ARM_START_S = 600.0  # emulated: imports of ONNX Runtime, NumPy and gRPC under qemu


def build_rootfs() -> Path:
    """The cached arm64 tree (built here when missing, which takes minutes); skip where the
    kernel refuses to run aarch64 binaries (rootfs.sh exits 3 and says why)."""
    if os.geteuid() != 0:
        pytest.skip("the arm64 test needs root (debootstrap, chroot, mounts); CI runs it as root")
    result = subprocess.run(
        ["bash", str(ROOTFS_SH), sys.executable],
        capture_output=True,
        text=True,
        timeout=2400,
        check=False,
        cwd=REPO,
    )
    if result.returncode == 3:
        pytest.skip(f"aarch64 binaries cannot run here: {result.stderr.strip()}")
    assert result.returncode == 0, f"deploy/arm64/rootfs.sh failed:\n{result.stderr}"
    return Path(result.stdout.strip().splitlines()[-1])


def build_wheel(root: Path, out: Path) -> Path:
    """The project's wheel from this checkout, built offline (the build backend's wheels are in
    the tree's /wheels)."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps",
         "--no-index", "--find-links", str(root / "wheels"), "-w", str(out), str(REPO)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"pip wheel failed:\n{result.stdout}\n{result.stderr}"
    (wheel,) = out.glob("edgefleet-*.whl")
    return wheel


@dataclass
class Arm64:
    root: Path
    workdir: Path  # bound at the same path inside: data dirs, keys, the wheel

    def argv(self, *command: str) -> list[str]:
        return [str(ENTER_SH), str(self.root), str(self.workdir / "overlay"),
                "--bind", str(self.workdir), "--", *command]  # fmt: skip

    def run(self, *command: str, timeout: float = 600) -> str:
        result = subprocess.run(
            self.argv(*command), capture_output=True, text=True, timeout=timeout, check=False
        )
        assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout


@dataclass
class Mixed:
    """A fleet of one x86 agent and one emulated arm64 agent on this machine's controller."""

    name: str
    x86: str
    arm: str
    arm_info: dict[str, Any]
    x86_info: dict[str, Any]
    watchers: dict[str, Watcher]  # each device's own reports on the broker
    cli: Cli
    controller: Controller
    procs: Processes
    timings: dict[str, float]

    def devices(self) -> dict[str, dict[str, Any]]:
        return {d["device_id"]: d for d in self.cli.json("devices", "list", "--fleet", self.name)}

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.tail(30)}" for p in self.procs.started)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory, broker: Broker) -> Iterator[Mixed]:
    timings: dict[str, float] = {}
    started = time.monotonic()
    root = build_rootfs()
    timings["rootfs_s"] = time.monotonic() - started
    workdir = tmp_path_factory.mktemp("arm64")
    arm = Arm64(root, workdir)
    started = time.monotonic()
    wheel = build_wheel(root, workdir / "dist")
    arm.run("/opt/edgefleet/bin/pip", "install", "-q", "--disable-pip-version-check",
            "--no-cache-dir", "--no-index", "--find-links", "/wheels", str(wheel))  # fmt: skip
    timings["install_s"] = time.monotonic() - started
    tag = uuid.uuid4().hex[:6]
    name, x86, arm_id = f"arm-{tag}", f"arm-{tag}-x86", f"arm-{tag}-a64"
    watchers = {d: Watcher(broker.url, device_id=d, fleet=name) for d in (x86, arm_id)}
    with Processes(workdir / "logs") as procs:
        try:
            controller = start_controller(
                procs, workdir / "controller", mqtt_url=broker.url,
                extra_args=["--mqtt-client-id", f"controller-{tag}"], insecure=True,
            )  # fmt: skip
            cli = Cli(controller.api, controller.token_file, controller.api_ca)
            trusted = workdir / "trusted.pem"
            cli.ok("keys", "init", "--out", trusted)
            # the arm64 device enrolls: its key is made on the device, only the CSR leaves it
            token = workdir / "a64.token"
            cli.ok("device", "enroll", arm_id, "--fleet", name, "--token-file", token)
            data_dir = workdir / "agents" / arm_id
            started = time.monotonic()
            enrolled = arm.run("/opt/edgefleet/bin/edge-agent", "enroll", "--controller",
                               controller.address, "--insecure", "--token-file", str(token),
                               "--data-dir", str(data_dir))  # fmt: skip
            timings["enroll_s"] = time.monotonic() - started
            assert f"device={arm_id} fleet={name}" in enrolled, enrolled
            started = time.monotonic()
            proc = procs.spawn(arm_id, arm.argv(
                "/opt/edgefleet/bin/edge-agent", "run", "--mqtt", broker.url,
                "--controller", controller.address, "--data-dir", str(data_dir),
                "--predict-listen", "127.0.0.1:0", "--metrics-port", "0",
                "--trusted-key", str(trusted), "--telemetry-interval", "2", "--no-containers",
                "--insecure",  # the controller here is plaintext
            ), tier=2)  # fmt: skip
            (agent,) = start_agents(
                procs, [AgentSpec(x86, name)], workdir=workdir, mqtt_url=broker.url,
                controller=controller.address, trusted_key=trusted, telemetry_interval_s=2.0,
                insecure=True,
            )  # fmt: skip
            arm_info = wait_for_json(data_dir / "agent.json", proc, timeout_s=ARM_START_S)
            timings["arm_start_s"] = time.monotonic() - started
            x86_info = json.loads((agent.data_dir / "agent.json").read_text())
        except StartError as exc:
            pytest.fail(f"{exc}; the end of its log:\n{exc.log_tail}")
        yield Mixed(
            name, x86, arm_id, arm_info, x86_info, watchers, cli, controller, procs, timings
        )
    for watcher in watchers.values():
        watcher.close()


def wait_devices(fleet: Mixed, check: Any, *, timeout: float, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        devices = fleet.devices()
        if check(devices):
            return devices
        assert time.monotonic() < deadline, f"{what}: {devices}\n{fleet.logs()}"
        time.sleep(1.0)


def test_an_emulated_arm64_agent_enrolls_applies_a_release_and_answers_as_x86_does(
    mixed: Mixed,
    digits_data: digits.DigitsData,
    digits_model: digits.TrainedModel,
    tmp_path: Path,
) -> None:
    assert mixed.arm_info["machine"] == "aarch64", mixed.arm_info
    assert mixed.x86_info["machine"] == "x86_64", mixed.x86_info
    # the hardware each agent reports in its status (probed at start)
    for device, arch in ((mixed.arm, "aarch64"), (mixed.x86, "x86_64")):
        status = mixed.watchers[device].wait_status(
            lambda s: s.hardware is not None, what="with its hardware", timeout=300
        )
        assert status.hardware is not None and status.hardware.arch == arch, status.hardware
    both = {mixed.x86, mixed.arm}
    wait_devices(mixed, lambda d: set(d) == both, timeout=300, what="both devices registered")

    path = tmp_path / "digits.onnx"
    path.write_bytes(digits_model.onnx_bytes)
    mixed.cli.ok("model", "add", path, "--name", "digits")
    mixed.cli.ok("release", "create", "digits", "--version", "1.0.0")
    started = time.monotonic()
    result = mixed.cli.run(
        "deploy", "digits:1.0.0", "--fleet", mixed.name, "--wait", "--timeout", "900", "--json",
        timeout=960,
    )  # fmt: skip
    mixed.timings["deploy_s"] = time.monotonic() - started
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{mixed.logs()}"
    summary = json.loads(result.stdout)
    assert summary["ok"] is True and sorted(t["device_id"] for t in summary["targets"]) == sorted(
        both
    )
    wait_devices(
        mixed,
        lambda d: all(
            x["phase"] == "active" and x["active_release"] == "digits:1.0.0"
            and x["generation_applied"] == x["generation_desired"] > 0 and x["predict_endpoint"]
            for x in d.values()
        ),
        timeout=300, what="both devices active on digits:1.0.0",
    )  # fmt: skip

    npz = tmp_path / "test-digits.npz"
    np.savez(npz, pixels=digits_data.x_test)
    answers = {}
    for device in (mixed.x86, mixed.arm):
        started = time.monotonic()
        out = mixed.cli.ok("predict", "--device", device, "--input", npz, "--output-json",
                           timeout=300)  # fmt: skip
        mixed.timings[f"predict_{'arm' if device == mixed.arm else 'x86'}_s"] = (
            time.monotonic() - started
        )
        answers[device] = json.loads(out)
        assert answers[device]["release"] == "digits:1.0.0", answers[device]
    x86, arm = answers[mixed.x86]["outputs"], answers[mixed.arm]["outputs"]
    assert set(x86) == set(arm) == {"label", "probabilities"}
    np.testing.assert_array_equal(np.asarray(arm["label"]["data"]), x86["label"]["data"])
    assert arm["probabilities"]["shape"] == x86["probabilities"]["shape"]
    p_arm = np.asarray(arm["probabilities"]["data"], dtype=np.float32)
    p_x86 = np.asarray(x86["probabilities"]["data"], dtype=np.float32)
    np.testing.assert_allclose(p_arm, p_x86, rtol=0, atol=1e-6)
    ulps = int(np.max(np.abs(p_arm.view(np.int32) - p_x86.view(np.int32))))
    print(
        f"arm64 vs x86 probabilities: bit-exact={bool((p_arm == p_x86).all())}, max {ulps} ulp,"
        f" max |diff| {float(np.max(np.abs(p_arm - p_x86))):.3g}"
    )
    print("arm64 timings:", json.dumps({k: round(v, 1) for k, v in mixed.timings.items()}))
