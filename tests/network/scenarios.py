"""The real-network scenarios, each on a fleet of its own (``netfleet.net_fleet``): what the
tests in this package assert on and what ``bench/network.py`` reports.

* ``rollout_over_bad_links``: every device's link at 1 Mbit/s, 300 ms, 5 % loss each way (what
  the kernel can do of it: ``Applied``); a rollout of a ~0.5 MB model must succeed.
* ``download_cut_ten_times``: a ~1.2 MB download over a 1 Mbit/s link, the cable pulled ten
  times mid-way (each cut outlasting ``--fetch-stall``): it resumes every time and verifies.
* ``partition_for_an_hour``: two devices cut off for the compressed hour (``netfleet.HOUR_S``)
  in the middle of a rollout's health window: they keep serving their apps, the window passes
  offline, and once healed the rollout succeeds; the events and telemetry of the hour reach the
  broker, all of them from the device with the default outbox, the newest ``--outbox-max`` from
  the one with a small outbox, which counts what it dropped.
* ``failover_across_hosts``: a device's agent SIGKILLed under a stream of ``FailoverClient``
  requests from another host; none is lost, and the first neighbour's answer is timed.
"""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edgefleet.common import digests
from edgefleet.demo import digits
from edgefleet.demo.processes import child_env
from tests.e2e.conftest import EDGECTL
from tests.network import netfleet
from tests.network.netfleet import HOUR_S, KEEPALIVE_S, TELEMETRY_S, Device, NetFleet
from tests.network.netns import Applied, Impairment

BAD_LINK = Impairment(rate_kbit=1000, delay_ms=300, loss_pct=5.0)
STALL_S = 1.5  # --fetch-stall of the cut download: a cut of CUT_S is noticed
CUT_S = 3.5
WINDOW_S = 8  # the health window the partition falls into


def small_model() -> bytes:
    return digits.train(digits.load_data(), hidden=16, max_iter=60).onnx_bytes


class Deploy:
    """``edgectl deploy`` running in the background (it follows the rollout to its end)."""

    def __init__(self, fleet: NetFleet, release: str, *extra: str) -> None:
        argv = [*EDGECTL, "--controller", fleet.cli.controller, "deploy", release,
                "--fleet", fleet.name, *extra]  # fmt: skip
        env = {**child_env(), "EDGECTL_TOKEN_FILE": str(fleet.cli.token_file)}
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.ended: float | None = None

    def wait(self, timeout_s: float) -> tuple[int, str]:
        try:
            out, _ = self.proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
            return -1, out
        self.ended = time.monotonic()
        return self.proc.returncode, out

    @property
    def seconds(self) -> float:
        return (self.ended or time.monotonic()) - self.started


@dataclass
class RolloutResult:
    applied: Applied
    model_bytes: int
    exit_code: int
    output: str
    seconds: float
    active: dict[str, str]


def rollout_over_bad_links(workdir: Path, *, devices: int = 3) -> RolloutResult:
    model = netfleet.big_model(1800)  # ~0.5 MB
    with netfleet.net_fleet(workdir, devices=devices) as fleet:
        release = fleet.release(model, "bigdigits", "1.0.0")
        applied = [fleet.network.degrade(d.host, BAD_LINK) for d in fleet.devices.values()]
        deploy = Deploy(fleet, release)
        code, out = deploy.wait(240)
        rows = fleet.device_rows()
        return RolloutResult(
            applied[0],
            len(model),
            code,
            out[-3000:] + ("" if code == 0 else fleet.logs()),
            deploy.seconds,
            {d: rows[d]["active_release"] for d in fleet.devices},
        )


@dataclass
class CutResult:
    cuts: int
    exit_code: int
    output: str
    model_bytes: int
    resumed: int  # fetch_resumed events
    verified: bool
    active: str
    downloaded_bytes: float  # the agent's edgefleet_download_bytes_total
    link_rx_bytes: int  # what the device's eth0 received, all in
    seconds: float

    @property
    def resent_bytes(self) -> int:
        """Bytes fetched more than once (0: every resume began where the bytes on disk ended)."""
        return max(0, int(self.downloaded_bytes) - self.model_bytes)


def download_cut_ten_times(workdir: Path, *, cuts: int = 10) -> CutResult:
    model = netfleet.big_model(4000)  # ~1.2 MB, 18 chunks: ten cuts never outrun it
    digest = digests.of_bytes(model)
    args = ["--fetch-stall", f"{STALL_S:g}"]
    with netfleet.net_fleet(workdir, devices=1, agent_args=args) as fleet:
        device = next(iter(fleet.devices.values()))
        fleet.network.degrade(device.host, Impairment(rate_kbit=1000, delay_ms=0, loss_pct=0))
        release = fleet.release(model, "bigdigits", "1.0.0")
        partial = device.agent.data_dir / "partial" / f"{digests.hex_part(digest)}.part"
        rx_before = _rx_bytes(device)
        deploy = Deploy(fleet, release)
        done = 0
        for _ in range(cuts):
            seen = _size(partial)
            # pull the cable once the download moved on (and while it still runs)
            moved = fleet.wait(
                "the download to move on",
                lambda seen=seen: (
                    _size(partial) >= seen + 32 * 1024 or deploy.proc.poll() is not None
                ),
                timeout_s=90,
                every=0.05,
            )
            if not moved or deploy.proc.poll() is not None or not partial.exists():
                break
            fleet.network.cut(device.host)
            time.sleep(CUT_S)
            fleet.network.heal(device.host)
            done += 1
        code, out = deploy.wait(240)
        events = fleet.events(device.device_id)
        kinds = [e["kind"] for e in events]
        row = fleet.device_rows()[device.device_id]
        return CutResult(
            cuts=done,
            exit_code=code,
            output=out[-3000:] + ("" if code == 0 else fleet.logs()),
            model_bytes=len(model),
            resumed=kinds.count("fetch_resumed"),
            verified="verified" in kinds,
            active=row["active_release"],
            downloaded_bytes=netfleet.metric(device, "edgefleet_download_bytes_total") or 0.0,
            link_rx_bytes=_rx_bytes(device) - rx_before,
            seconds=deploy.seconds,
        )


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _rx_bytes(device: Device) -> int:
    out = device.host.run("cat", "/sys/class/net/eth0/statistics/rx_bytes").stdout
    return int(out.strip() or 0)


@dataclass
class PartitionResult:
    cut_s: float
    served_while_cut: dict[str, int]
    asked_while_cut: int
    exit_code: int
    output: str
    active: dict[str, str]
    window_passed_offline: dict[str, bool]  # its health_window_passed was stamped while cut off
    samples_while_cut: dict[str, int]  # telemetry stamped while cut off that reached the broker
    expected_samples: int  # what an hour makes at the default interval
    dropped: dict[str, float]  # edgefleet_outbox_dropped_total
    outbox_max: int
    converged_after_heal_s: float  # from the heal to the rollout's end
    caught_up_after_heal_s: float  # from the heal to both outboxes seen empty (else it raised)


def partition_for_an_hour(workdir: Path, *, small_outbox: int = 100) -> PartitionResult:
    """Device 1 keeps the default outbox, device 2 gets ``--outbox-max small_outbox``."""
    args = ["--mqtt-keepalive", str(KEEPALIVE_S)]
    with netfleet.net_fleet(
        workdir,
        devices=2,
        agent_args=args,
        per_device_args={2: ["--outbox-max", str(small_outbox)]},
        telemetry_interval_s=TELEMETRY_S,
    ) as fleet:
        ids = sorted(fleet.devices)
        listener = netfleet.Listener(fleet.broker.url, ids)
        try:
            release = fleet.release(
                small_model(), "digits", "1.0.0", "--health-window", f"{WINDOW_S}s"
            )
            deploy = Deploy(fleet, release)
            fleet.wait("both devices activated", lambda: fleet.all_on(release), 90, 0.1)
            cut_ms = int(time.time() * 1000)
            cut_at = time.monotonic()
            for d in fleet.devices.values():
                fleet.network.cut(d.host)
            served: dict[str, int] = {}
            asked = 50
            apps = [
                threading.Thread(
                    target=lambda d=d: served.__setitem__(
                        d.device_id, netfleet.local_predicts(d, asked)[0]
                    ),
                    name="netfleet-app",
                )
                for d in fleet.devices.values()
            ]
            for a in apps:
                a.start()
            for a in apps:
                a.join(60)
            time.sleep(max(0.0, HOUR_S - (time.monotonic() - cut_at)))
            heal_ms = int(time.time() * 1000)
            for d in fleet.devices.values():
                fleet.network.heal(d.host)
            healed_at = time.monotonic()
            cut_s = healed_at - cut_at
            code, out = deploy.wait(120)
            converged_s = time.monotonic() - healed_at
            # caught up: each outbox empty again
            fleet.wait(
                "the outboxes drained",
                lambda: all(
                    netfleet.metric(d, "edgefleet_outbox_pending") == 0
                    for d in fleet.devices.values()
                ),
                90,
                0.5,
            )
            caught_up_s = time.monotonic() - healed_at
            windows: dict[str, bool] = {}
            for device_id in ids:
                events = fleet.events(device_id)
                passed = [e for e in events if e["kind"] == "health_window_passed"]
                windows[device_id] = any(cut_ms <= int(e["at_ms"]) <= heal_ms for e in passed)
            rows = fleet.device_rows()
            return PartitionResult(
                cut_s=cut_s,
                served_while_cut=served,
                asked_while_cut=asked,
                exit_code=code,
                output=out[-3000:] + ("" if code == 0 else fleet.logs()),
                active={d: rows[d]["active_release"] for d in ids},
                window_passed_offline=windows,
                samples_while_cut={
                    d: len(listener.samples_between(d, cut_ms, heal_ms)) for d in ids
                },
                expected_samples=int(HOUR_S / TELEMETRY_S),
                dropped={
                    d.device_id: netfleet.metric(d, "edgefleet_outbox_dropped_total") or 0.0
                    for d in fleet.devices.values()
                },
                outbox_max=small_outbox,
                converged_after_heal_s=converged_s,
                caught_up_after_heal_s=caught_up_s,
            )
        finally:
            listener.close()


def failover_across_hosts(workdir: Path) -> netfleet.FailoverRun:
    with netfleet.net_fleet(workdir, devices=3) as fleet:
        release = fleet.release(small_model(), "digits", "1.0.0")
        fleet.cli.ok("deploy", release, "--fleet", fleet.name, timeout=120)
        victim = fleet.devices[sorted(fleet.devices)[0]]
        x = digits.load_data().x_test
        return netfleet.kill_under_load(fleet, victim, x, release=release)
