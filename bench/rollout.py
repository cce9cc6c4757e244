"""Rollout: one release to 100, 1,000, 5,000 and 10,000 simulated devices, deploy -> succeeded.

For each fleet size a fresh stack: a Mosquitto on a free loopback port, the real controller
(``edge-controller run``, its own process, so its CPU time is its alone), a signing key, a tiny
ONNX model and one release; then ``bench/simfleet.py`` connects N lightweight agents from
simulator processes (one per 2,500 devices, ``--sim-procs``), each agent with its own MQTT
connection, following the agent's protocol (signed desired state opened and checked, phases
``fetching -> verifying -> staged -> health_check -> active`` reported as retained statuses and
events, telemetry at the end). The blob download is not
simulated: devices do not call ArtifactService, so this measures the control plane.

Once every device is registered (``ListDevices``' total), the clock starts at the ``Deploy`` RPC
(all at once) and stops when ``GetRollout`` (polled every 0.2 s, one device listed: the counts
say the rest) says ``succeeded``. The
controller's CPU seconds over that interval come from ``/proc/<pid>/stat`` (utime + stime).

Targets: 1,000 devices in under 60 s; controller CPU per device at the largest size at most
1.5x that at the smallest, and at most 1.5x that at 1,000 (cost growing no faster than
linearly). The open-file limit is raised to its hard limit (the broker, spawned here, inherits
it; its config has no connection cap). Writes ``bench/results/rollout.json``: one record per
size with ``devices``, ``seconds``, ``controller_cpu_s``, ``succeeded``,
``cpu_per_device_vs_1000`` and more. ``python bench/rollout.py --sizes 10,50`` for a
quick run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
from rich.console import Console
from rich.table import Table

from edgefleet.common import rolloutwords, rpc
from edgefleet.common.signing import TrustStore, load_public_keys
from edgefleet.edgectl.client import authorized
from edgefleet.v1 import controller_pb2 as pb
from edgefleet.v1 import controller_pb2_grpc

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
from simfleet import SimFleets  # noqa: E402

SIZES = (100, 1000, 5000, 10000)
FLEET = "bench"
RELEASE = "bench-model:1.0.0"
TICK_S = 0.2
POLL_S = 0.2
TIMEOUT_S = 120.0
STOP_PHASES = (pb.ROLLOUT_PHASE_SUCCEEDED, pb.ROLLOUT_PHASE_ROLLED_BACK, pb.ROLLOUT_PHASE_PAUSED)
TIMEOUT_PER_DEVICE_S = 0.03  # a bigger fleet gets max(TIMEOUT_S, n * this)
TARGET_DEVICES = 1000
TARGET_SECONDS = 60.0
LINEAR_RATIO = 1.5
DEADLINE = 30.0
RESULTS = HERE / "results" / "rollout.json"
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """The stack could not be set up; the message says why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (every thread), from ``/proc/<pid>/stat``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            return soft
    return want


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["no_proxy"] = env["NO_PROXY"] = "127.0.0.1,localhost"
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("EDGEFLEET_LOG_JSON", "0")
    return env


def mosquitto_binary() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None


def tiny_model() -> bytes:
    """An Identity model, float32[-1, 4] -> float32[-1, 4]: the smallest valid release."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "bench", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def wait_for(
    probe: Any, timeout: float, what: str, proc: subprocess.Popen[bytes] | None = None
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{what}: process exited with {proc.returncode}")
        value = probe()
        if value:
            return value
        time.sleep(0.05)
    raise BenchError(f"timed out after {timeout:g}s waiting for {what}")


class Stack:
    """A broker and a controller for one fleet size, in ``workdir``.

    A plain class, not a dataclass: ``bench/run.py`` loads this file without registering it in
    ``sys.modules``, where dataclasses cannot resolve their annotations.
    """

    def __init__(self, workdir: Path, *, tick_s: float = TICK_S) -> None:
        self.workdir = workdir
        self.tick_s = tick_s
        self.broker: subprocess.Popen[bytes] | None = None
        self.controller: subprocess.Popen[bytes] | None = None
        self.broker_port = 0
        self.address = ""
        self.api = ""  # the operator API (ControllerService), with the admin token
        self.metrics_port = 0
        self.channel: grpc.Channel | None = None
        self.stub: Any = None

    def start(self) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise BenchError("mosquitto is not installed (apt-get install mosquitto)")
        self.broker_port = free_port()
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.broker_port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "max_connections -1\n"
            "max_queued_messages 100000\n" + ("user root\n" if os.geteuid() == 0 else "")
        )
        self.broker = self._spawn("mosquitto", [binary, "-c", str(conf)])
        wait_for(self._listening, 10, "mosquitto to listen", self.broker)

        data = self.workdir / "controller"
        data.mkdir()
        self.address = f"127.0.0.1:{free_port()}"
        self.api = f"127.0.0.1:{free_port()}"
        self.metrics_port = free_port()
        exe = Path(sys.executable).parent / "edge-controller"
        argv = [str(exe)] if exe.is_file() else [sys.executable, "-m", "edgefleet.controller"]
        argv += [
            "run",
            "--data-dir", str(data),
            "--grpc", self.address,
            "--api", self.api,
            "--mqtt", f"mqtt://127.0.0.1:{self.broker_port}",
            "--mqtt-client-id", "bench-controller",
            "--rollout-tick", str(self.tick_s),
            "--metrics-port", str(self.metrics_port),
            "--insecure",  # its devices are simulated, not enrolled
        ]  # fmt: skip
        self.controller = self._spawn("controller", argv)
        state = data / "controller.json"
        wait_for(state.exists, 60, "the controller to start", self.controller)
        info = json.loads(state.read_text())
        if info.get("pid") != self.controller.pid:
            raise BenchError(f"controller.json names pid {info.get('pid')}, not ours")
        self.address = info.get("grpc") or self.address
        self.api = info.get("api") or self.api
        token = (data / "admin.token").read_text().strip()
        self.channel = authorized(rpc.channel(self.api), token)
        self.stub = controller_pb2_grpc.ControllerServiceStub(self.channel)

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = self.workdir / f"{name}.log"
        with log.open("ab") as out:
            return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=child_env())

    def _listening(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.broker_port)) == 0

    def controller_cpu(self) -> float:
        assert self.controller is not None
        return cpu_seconds(self.controller.pid)

    def broker_cpu(self) -> float:
        assert self.broker is not None
        return cpu_seconds(self.broker.pid)

    def stop(self) -> None:
        if self.channel is not None:
            self.channel.close()
        for proc in (self.controller, self.broker):
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def trust_store(stub: Any) -> TrustStore:
    return TrustStore(k for pem in public_keys(stub) for k in load_public_keys(pem))


def public_keys(stub: Any) -> list[bytes]:
    """The controller's signing keys, PEM (what the simulator processes trust)."""
    keys = stub.ListKeys(pb.ListKeysRequest(), timeout=DEADLINE).keys
    return [info.public_key_pem.encode() for info in keys]


def release(stub: Any) -> None:
    """A signing key, the tiny model and release ``RELEASE``."""
    stub.InitKey(pb.InitKeyRequest(), timeout=DEADLINE)
    data = tiny_model()
    name, version = RELEASE.split(":")

    def parts() -> Any:
        yield pb.UploadModelRequest(header=pb.UploadHeader(name=name, size=len(data)))
        yield pb.UploadModelRequest(chunk=data)

    stub.UploadModel(parts(), timeout=DEADLINE)
    stub.CreateRelease(pb.CreateReleaseRequest(name=name, version=version), timeout=DEADLINE)


def registered(stub: Any, n: int) -> bool:
    """``n`` devices registered: one device's page says how many there are."""
    page = stub.ListDevices(pb.ListDevicesRequest(fleet=FLEET, page_size=1), timeout=DEADLINE)
    return int(page.total) >= n


def all_devices(stub: Any) -> list[Any]:
    """Every device of the fleet, page after page."""
    out: list[Any] = []
    token = ""
    while True:
        page = stub.ListDevices(
            pb.ListDevicesRequest(fleet=FLEET, page_size=1000, page_token=token), timeout=DEADLINE
        )
        out.extend(page.devices)
        token = page.next_page_token
        if not token:
            return out


def timed(call: Any) -> tuple[float, Any]:
    """Seconds one call took, and what it returned."""
    t0 = time.perf_counter()
    value = call()
    return time.perf_counter() - t0, value


def scrape(port: int) -> bytes:
    """The controller's ``/metrics``."""
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy
    with direct.open(f"http://127.0.0.1:{port}/metrics", timeout=DEADLINE) as r:
        return bytes(r.read())


def dropped(metrics: bytes) -> int:
    """Device messages the controller dropped (its ingest queue full), from ``/metrics``."""
    name = b"edgefleet_controller_dropped_messages_total"
    return int(sum(float(line.rsplit(b" ", 1)[1]) for line in metrics.splitlines()
                   if line.startswith(name)))  # fmt: skip


def measure(
    n: int,
    *,
    workdir: Path,
    tick_s: float = TICK_S,
    timeout_s: float = TIMEOUT_S,
    step_delay_s: float = 0.0,
    sim_procs: int = 0,
    console: Console | None = None,
) -> dict[str, Any]:
    """One rollout of ``RELEASE`` to ``n`` fresh simulated devices; one result record."""
    say = console.log if console is not None else (lambda *_a: None)
    stack = Stack(workdir, tick_s=tick_s)
    fleet: SimFleets | None = None
    try:
        stack.start()
        stub = stack.stub
        release(stub)
        ids = [f"sim-{i:05d}" for i in range(n)]
        t_connect = time.perf_counter()
        fleet = SimFleets(
            "127.0.0.1", stack.broker_port, FLEET, ids, public_keys(stub),
            processes=sim_procs, step_delay_s=step_delay_s,
        ).start()  # fmt: skip
        if not fleet.wait_ready(timeout=30 + n * 0.05):
            raise BenchError(
                f"only {fleet.counters.subscribed} of {n} devices connected and subscribed; "
                f"errors: {fleet.counters.errors[:3]}"
            )
        connect_s = time.perf_counter() - t_connect
        wait_for(lambda: registered(stub, n), 30 + n * 0.05, f"{n} devices registered")
        register_s = time.perf_counter() - t_connect
        say(f"{n} devices connected in {connect_s:.1f}s, registered in {register_s:.1f}s")

        cpu0, broker0, own0 = stack.controller_cpu(), stack.broker_cpu(), fleet.cpu_seconds()
        t0 = time.perf_counter()
        deployed = stub.Deploy(
            pb.DeployRequest(
                release=RELEASE,
                fleet=FLEET,
                strategy=pb.RolloutStrategy(strategy_kind=pb.STRATEGY_KIND_ALL_AT_ONCE),
            ),
            timeout=DEADLINE,
        )
        deploy_rpc_s = time.perf_counter() - t0
        t0_mono = time.monotonic() - deploy_rpc_s
        ref = pb.RolloutRef(rollout_id=deployed.rollout_id, device_limit=1)
        polls, info = 0, None
        while True:
            info = stub.GetRollout(ref, timeout=DEADLINE)
            polls += 1
            if info.rollout_phase in STOP_PHASES:
                break
            if time.perf_counter() - t0 > timeout_s:
                break
            time.sleep(POLL_S)
        seconds = time.perf_counter() - t0
        cpu = stack.controller_cpu() - cpu0
        broker_cpu = stack.broker_cpu() - broker0
        own_cpu = fleet.cpu_seconds() - own0
        succeeded = info.rollout_phase == pb.ROLLOUT_PHASE_SUCCEEDED

        # What one GetRollout of this size costs the controller: part of the figure above.
        c0 = stack.controller_cpu()
        for _ in range(10):
            stub.GetRollout(ref, timeout=DEADLINE)
        poll_cpu = (stack.controller_cpu() - c0) / 10
        # What an operator's reads cost at this size: edgectl's first page, rollout status's
        # GetRollout (1,000 devices listed, all counted) and a Prometheus scrape.
        list_s, _ = timed(
            lambda: stub.ListDevices(pb.ListDevicesRequest(fleet=FLEET), timeout=DEADLINE)
        )
        status_s, _ = timed(
            lambda: stub.GetRollout(pb.RolloutRef(rollout_id=deployed.rollout_id), timeout=DEADLINE)
        )
        scrape_s, metrics = timed(lambda: scrape(stack.metrics_port))
        devices = all_devices(stub)
        active = sum(
            1
            for d in devices
            if d.active_release == RELEASE and d.generation_applied >= d.generation_desired > 0
        )
        c = fleet.counters

        def rel(mark: float) -> float | None:
            return round(mark - t0_mono, 3) if mark else None

        record: dict[str, Any] = {
            "devices": n,
            "seconds": round(seconds, 3),
            "controller_cpu_s": round(cpu, 3),
            "succeeded": succeeded,
            "phase": rolloutwords.phase_word(info.rollout_phase),
            "reason": info.reason,
            "rollout_id": deployed.rollout_id,
            "controller_cpu_ms_per_device": round(cpu / n * 1000, 3),
            "deploy_rpc_s": round(deploy_rpc_s, 3),
            "first_desired_at_s": rel(c.first_desired_at),
            "last_desired_at_s": rel(c.last_desired_at),
            "last_activated_at_s": rel(c.last_activated_at),
            "succeeded_after_last_active_s": (
                round(seconds - (c.last_activated_at - t0_mono), 3) if c.last_activated_at else None
            ),
            "devices_activated": c.activated,
            "devices_active_per_controller": active,
            "desired_rejected": c.rejected,
            "disconnects": c.disconnected,
            "polls": polls,
            "poll_cpu_s_each": round(poll_cpu, 4),
            "list_devices_page_s": round(list_s, 4),
            "get_rollout_s": round(status_s, 4),
            "metrics_scrape_s": round(scrape_s, 4),
            "metrics_bytes": len(metrics),
            "ingest_dropped": dropped(metrics),
            "broker_cpu_s": round(broker_cpu, 3),
            "simulator_cpu_s": round(own_cpu, 3),
            "simulator_processes": fleet.processes,
            "connect_s": round(connect_s, 3),
            "register_s": round(register_s, 3),
            "rollout_tick_s": tick_s,
            "step_delay_s": step_delay_s,
            "blob_fetch_simulated": False,
            "cpus": os.cpu_count(),
        }
        if c.errors:
            record["errors"] = c.errors[:5]
        return record
    finally:
        if fleet is not None:
            fleet.stop()
        stack.stop()


def per_device_vs(record: dict[str, Any], base: dict[str, Any]) -> float:
    """``record``'s controller CPU per device over ``base``'s."""
    per_base = base["controller_cpu_s"] / base["devices"]
    per = record["controller_cpu_s"] / record["devices"]
    return per / per_base if per_base > 0 else float("inf")


Verdict = tuple[str, str, str, bool | None]  # measure, value, target, held (None: n/a)


def verdicts(records: list[dict[str, Any]]) -> list[Verdict]:
    """Each target against the records; held is None where a target does not apply."""
    out: list[Verdict] = []
    big = next((r for r in records if r["devices"] == TARGET_DEVICES), None)
    if big is None:
        out.append((f"{TARGET_DEVICES:,} devices", "not run", f"< {TARGET_SECONDS:g} s", None))
    else:
        ok = bool(big["succeeded"]) and big["seconds"] < TARGET_SECONDS
        value = f"{big['seconds']:.1f} s" + ("" if big["succeeded"] else f" ({big['phase']})")
        out.append((f"{TARGET_DEVICES:,} devices deploy -> succeeded", value,
                    f"< {TARGET_SECONDS:g} s", ok))  # fmt: skip
    done = sorted((r for r in records if r["succeeded"]), key=lambda r: r["devices"])
    if len(done) >= 2 and done[0]["devices"] < done[-1]["devices"]:
        small, large = done[0], done[-1]
        per_small = small["controller_cpu_s"] / small["devices"]
        per_large = large["controller_cpu_s"] / large["devices"]
        ratio = per_large / per_small if per_small > 0 else float("inf")
        out.append((
            f"controller CPU/device at {large['devices']:,} vs {small['devices']:,}",
            f"{ratio:.2f}x", f"<= {LINEAR_RATIO:g}x", ratio <= LINEAR_RATIO,
        ))  # fmt: skip
    else:
        out.append(("controller CPU/device growth", "needs 2 sizes", f"<= {LINEAR_RATIO:g}x", None))
    base = next((r for r in done if r["devices"] == TARGET_DEVICES), None)
    if base is not None and done[-1]["devices"] > TARGET_DEVICES:
        large = done[-1]
        ratio = per_device_vs(large, base)
        out.append((
            f"controller CPU/device at {large['devices']:,} vs {TARGET_DEVICES:,}",
            f"{ratio:.2f}x", f"<= {LINEAR_RATIO:g}x", ratio <= LINEAR_RATIO,
        ))  # fmt: skip
    out.extend(
        (f"{r['devices']:,} devices succeeded", r["phase"], "succeeded", bool(r["succeeded"]))
        for r in records
    )
    return out


def show(records: list[dict[str, Any]], console: Console) -> list[Verdict]:
    tick = records[0]["rollout_tick_s"]
    t1 = Table(title=f"Rollout deploy -> succeeded (all at once, tick {tick:g} s)")
    for col in ("devices", "seconds", "ctl CPU s", "ms/dev", "all active", "lag",
                "broker", "sim", "poll ms", "phase"):  # fmt: skip
        t1.add_column(col, justify="right")
    for r in records:
        t1.add_row(
            f"{r['devices']:,}",
            f"{r['seconds']:.2f}",
            f"{r['controller_cpu_s']:.2f}",
            f"{r['controller_cpu_ms_per_device']:.2f}",
            "-" if r["last_activated_at_s"] is None else f"{r['last_activated_at_s']:.2f}",
            "-"
            if r["succeeded_after_last_active_s"] is None
            else f"{r['succeeded_after_last_active_s']:.2f}",
            f"{r['broker_cpu_s']:.2f}",
            f"{r['simulator_cpu_s']:.2f}",
            f"{r['poll_cpu_s_each'] * 1000:.1f}",
            r["phase"],
        )
    console.print(t1)
    v = verdicts(records)
    t2 = Table(title="targets")
    for col in ("measure", "value", "target", "result"):
        t2.add_column(col)
    mark = {True: "[green]PASS[/]", False: "[red]FAIL[/]", None: "[yellow]n/a[/]"}
    for name, value, target, ok in v:
        t2.add_row(name, value, target, mark[ok])
    console.print(t2)
    console.print(
        "seconds: Deploy RPC to GetRollout = succeeded; ctl CPU s: the controller's CPU seconds "
        "in that time (ms/dev per device); all active: seconds until the last simulated device "
        "reported active; lag: from then to succeeded (the controller catching up: ingest, "
        "rollout tick, poll); broker, sim: CPU seconds of Mosquitto and of the simulator "
        "processes; poll ms: "
        f"controller CPU of one GetRollout (polled every {POLL_S:g} s, included in ctl CPU). "
        "Devices do not fetch blobs (no ArtifactService traffic)."
    )
    return v


def main(argv: list[str] | None = None) -> bool:
    parser = argparse.ArgumentParser(prog="bench/rollout.py", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)),
                        help="fleet sizes, comma separated")  # fmt: skip
    parser.add_argument("--tick", type=float, default=TICK_S, help="controller --rollout-tick")
    parser.add_argument("--timeout", type=float, default=0.0,
                        help=f"per rollout, seconds (0: max({TIMEOUT_S:g}, "
                        f"{TIMEOUT_PER_DEVICE_S:g} x devices))")  # fmt: skip
    parser.add_argument("--sim-procs", type=int, default=0,
                        help="simulator processes (0: one per 2,500 devices)")  # fmt: skip
    parser.add_argument("--step-delay", type=float, default=0.0,
                        help="seconds each simulated install step takes")  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON")
    args = parser.parse_args([] if argv is None else argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    console = Console()
    console = Console(width=max(console.width, 110))
    if mosquitto_binary() is None:
        console.print("[red]rollout benchmark needs mosquitto (apt-get install mosquitto)[/]")
        return False
    fds = raise_fd_limit()
    if fds < max(sizes) + 256:
        console.print(f"[red]open-file limit {fds} is too low for {max(sizes)} devices[/]")
        return False
    records = []
    with tempfile.TemporaryDirectory(prefix="bench-rollout-") as tmp:
        for n in sizes:
            workdir = Path(tmp) / f"n{n}"
            workdir.mkdir()
            with console.status(f"rollout to {n:,} simulated devices"):
                try:
                    record = measure(n, workdir=workdir, tick_s=args.tick,
                                     timeout_s=args.timeout
                                     or max(TIMEOUT_S, n * TIMEOUT_PER_DEVICE_S),
                                     step_delay_s=args.step_delay, sim_procs=args.sim_procs,
                                     console=console)  # fmt: skip
                except (BenchError, grpc.RpcError) as exc:
                    console.print(f"[red]{n} devices: {exc}[/]")
                    for log in sorted(workdir.glob("*.log")):
                        tail = log.read_text(errors="replace").splitlines()[-5:]
                        console.print(f"{log.name}:\n  " + "\n  ".join(tail))
                    return False
            console.log(
                f"{n:,} devices: {record['phase']} in {record['seconds']:.2f}s, "
                f"controller {record['controller_cpu_s']:.2f} CPU s; after it, a ListDevices "
                f"page {record['list_devices_page_s'] * 1000:.0f} ms, GetRollout "
                f"{record['get_rollout_s'] * 1000:.0f} ms, /metrics "
                f"{record['metrics_scrape_s'] * 1000:.0f} ms ({record['metrics_bytes']:,} bytes)"
            )
            records.append(record)
    base = next((r for r in records if r["devices"] == TARGET_DEVICES and r["succeeded"]), None)
    for r in records:
        r["cpu_per_device_vs_1000"] = (
            round(per_device_vs(r, base), 3) if base is not None and r["succeeded"] else None
        )
    v = show(records, console)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(records, indent=2) + "\n")
    console.print(f"wrote {args.out}")
    return all(ok is not False for *_, ok in v)


if __name__ == "__main__":
    raise SystemExit(0 if main(sys.argv[1:]) else 1)
