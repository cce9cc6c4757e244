"""The agent's footprint on a device (issue 10 item 3): memory, start-up, install size, CLI.

The agent runs as a device runs it: this checkout's wheel pip-installed into a fresh venv
(tests/deploy/agentenv.py, cached by the wheel's dependency list) with ONNX Runtime from the
``cpu`` extra and nothing else, as a real ``edge-agent run`` process against a real Mosquitto,
metrics on (``--metrics-port 0``). It is given the digits model as a signed release (the
bench acting as the controller: blobs from an ArtifactService, a signed desired state over
MQTT), stopped, and started again: that restart is what a device's boot does.

Writes bench/results/footprint.json:

* ``agent_rss_mb``: the restarted agent's resident set (VmRSS) after ``IDLE_S`` seconds idle,
  serving the model, /metrics answered once. Target: under 80 MB.
* ``agent_start_s``: from the process's start to its first Predict answered with the model.
  Target: under 2 s.
* ``agent_install_mb``: site-packages of a fresh ``pip install edgefleet`` (no extras), less
  pip and setuptools; ``agent_install_cpu_mb`` the same with ONNX Runtime (``edgefleet[cpu]``).
* ``cli_help_s``: the median wall time of ``edgectl --help`` (this checkout's venv) over
  ``HELP_RUNS`` runs. Target: under 0.3 s. ``cli_help_cpu_s``: its CPU time (user + system),
  which a loaded machine does not inflate as it does the wall time.

``agent_floor_mb``: what the agent's dependencies hold with no agent code, in the same venv
(``FLOOR_SCRIPT``: Python, numpy, onnxruntime with this model's session run, a gRPC server and
channel, cryptography's Ed25519 and X.509, protobuf, paho-mqtt, prometheus_client), each step's
cost and the ``total``: the agent cannot go below it, and ``agent_rss_mb`` less it is what the
agent's own code and state hold.

Extras: ``agent_peak_rss_mb`` (VmHWM), ``agent_rss_anon_mb`` / ``agent_rss_file_mb`` (the
process's own memory / mapped library code, shared with other processes), ``agent_threads``,
``agent_installed`` (the base venv's distributions), ``targets`` and ``held``. Figures depend
on this machine and its load; nothing here is asserted by a test.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from edgefleet.demo import digits  # noqa: E402
from tests.agent.helpers import (  # noqa: E402
    AgentProcess,
    ArtifactServer,
    Signer,
    Watcher,
    install,
    predict,
    read_agent_json,
)
from tests.conftest import Broker  # noqa: E402
from tests.deploy import agentenv  # noqa: E402

RESULTS = HERE / "results" / "footprint.json"
TARGETS = {"agent_rss_mb": 80.0, "agent_start_s": 2.0, "cli_help_s": 0.3}
IDLE_S = 5.0
HELP_RUNS = 7
START_TIMEOUT_S = 60.0


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


def _serving(agent: AgentProcess, proc: subprocess.Popen[bytes], feed: dict[str, Any]) -> str:
    """Wait for the restarted agent's first Predict answered; its endpoint."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"agent exited with {proc.returncode}:\n{agent.output()}")
        info = read_agent_json(agent.data_dir)
        if info and info["pid"] == proc.pid:
            try:
                predict(info["predict_endpoint"], feed)
            except grpc.RpcError:
                pass
            else:
                return str(info["predict_endpoint"])
        time.sleep(0.01)
    raise RuntimeError(f"agent not serving after {START_TIMEOUT_S:.0f} s:\n{agent.output()}")


def measure_agent(venv: Path) -> dict[str, Any]:
    data = digits.load_data()
    trained = digits.train(data, hidden=32, seed=0)
    feed = {"pixels": data.x_test[:1].copy()}
    with tempfile.TemporaryDirectory(prefix="bench-footprint-") as tmp:
        work = Path(tmp)
        broker = Broker(work)
        broker.start()
        signer = Signer(work)
        artifacts = ArtifactServer(work / "artifacts")
        agent = AgentProcess(
            device_id="footprint",
            data_dir=work / "footprint",
            broker_url=broker.url,
            controller=artifacts.address,
            key_file=signer.key_file,
        )
        assert agent.args[1:4] == ["-m", "edgefleet.agent", "run"]
        agent.args[0:4] = [str(venv / "bin" / "edge-agent"), "run"]
        at = agent.args.index("--metrics-port")
        agent.args[at + 1] = "0"
        agent.args[agent.args.index("--log-level") + 1] = "WARNING"
        watcher = Watcher(broker.url, device_id="footprint")
        try:
            agent.start()
            install(watcher, signer, artifacts, trained.onnx_bytes, version="1.0.0", generation=1)
            agent.terminate()
            started = time.monotonic()
            proc = agent.launch()
            _serving(agent, proc, feed)
            start_s = time.monotonic() - started
            info = read_agent_json(agent.data_dir) or {}
            url = f"http://127.0.0.1:{info['metrics_port']}/metrics"
            with urllib.request.urlopen(url, timeout=10) as reply:  # metrics really on
                metrics_bytes = len(reply.read())
            time.sleep(IDLE_S)
            rss_mb = _status_kb(proc.pid, "VmRSS") / 1024
            peak_mb = _status_kb(proc.pid, "VmHWM") / 1024
            anon_mb = _status_kb(proc.pid, "RssAnon") / 1024
            file_mb = _status_kb(proc.pid, "RssFile") / 1024
            threads = _status_kb(proc.pid, "Threads")
        finally:
            agent.kill()
            watcher.close()
            artifacts.stop()
            broker.kill()
    return {
        "agent_rss_mb": round(rss_mb, 1),
        "agent_start_s": round(start_s, 3),
        "agent_peak_rss_mb": round(peak_mb, 1),
        "agent_rss_anon_mb": round(anon_mb, 1),  # the process's own memory
        "agent_rss_file_mb": round(file_mb, 1),  # mapped code, shared with other processes
        "agent_threads": threads,
        "agent_metrics_bytes": metrics_bytes,
    }


# What the agent's dependencies cost on their own, step by step, in the agent's venv: VmRSS
# (MB) after each step, each one's cost the difference from the step before.
FLOOR_SCRIPT = """
import json, sys
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
steps = {"python": rss()}
import numpy as np; steps["numpy"] = rss()
import onnxruntime as ort; steps["onnxruntime"] = rss()
o = ort.SessionOptions(); o.log_severity_level = 3
s = ort.InferenceSession(sys.argv[1], o, providers=["CPUExecutionProvider"])
x = np.load(sys.argv[2])
for _ in range(100):
    s.run(None, {s.get_inputs()[0].name: x})
steps["onnxruntime_session"] = rss()
import grpc; steps["grpc"] = rss()
from concurrent import futures
server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
port = server.add_insecure_port("127.0.0.1:0"); server.start()
channel = grpc.insecure_channel(f"127.0.0.1:{port}")
grpc.channel_ready_future(channel).result(timeout=10)
steps["grpc_server_and_channel"] = rss()
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
k = ed25519.Ed25519PrivateKey.generate(); k.public_key().verify(k.sign(b"x"), b"x")
steps["cryptography"] = rss()
import google.protobuf.message; steps["protobuf"] = rss()
import paho.mqtt.client; steps["paho_mqtt"] = rss()
import prometheus_client; steps["prometheus_client"] = rss()
print(json.dumps(steps))
"""


def measure_floor(venv: Path, model: bytes, x: Any) -> dict[str, float]:
    """The dependencies' own resident set, without the agent: ``FLOOR_SCRIPT`` in ``venv``;
    each step's cost in MB and, as ``total``, the RSS after the last."""
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmp:
        model_file, x_file = Path(tmp) / "model.onnx", Path(tmp) / "x.npy"
        model_file.write_bytes(model)
        np.save(x_file, x)
        out = subprocess.run(
            [str(venv / "bin" / "python"), "-c", FLOOR_SCRIPT, str(model_file), str(x_file)],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
    steps: dict[str, float] = json.loads(out.stdout)
    names = list(steps)
    costs = {
        n: round(steps[n] - (steps[names[i - 1]] if i else 0.0), 1) for i, n in enumerate(names)
    }
    return {**costs, "total": round(steps[names[-1]], 1)}


def cli_help_s() -> tuple[float, float]:
    """Median wall and CPU (user + system) seconds of ``edgectl --help``, after a first run
    that writes the byte code (as pip does on install; PYTHONDONTWRITEBYTECODE is dropped)."""
    edgectl = Path(sys.executable).parent / "edgectl"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    walls, cpus = [], []
    for _ in range(HELP_RUNS + 1):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        subprocess.run([edgectl, "--help"], check=True, capture_output=True, timeout=60, env=env)
        walls.append(time.monotonic() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return round(statistics.median(walls[1:]), 3), round(statistics.median(cpus[1:]), 3)


def main() -> bool:
    base = agentenv.agent_venv()
    cpu = agentenv.agent_venv("cpu")
    help_wall, help_cpu = cli_help_s()
    data = digits.load_data()
    model = digits.train(data, hidden=32, seed=0).onnx_bytes
    result: dict[str, Any] = {
        **measure_agent(cpu),
        # the dependencies alone (numpy, an ORT session, a gRPC server, cryptography, paho,
        # prometheus_client): the agent's RSS less this is what its own code and state hold
        "agent_floor_mb": measure_floor(cpu, model, data.x_test[:1].copy()),
        "agent_install_mb": round(agentenv.size_mb(base), 1),
        "cli_help_s": help_wall,
        "cli_help_cpu_s": help_cpu,  # what the machine's load does not inflate
        "agent_install_cpu_mb": round(agentenv.size_mb(cpu), 1),
        "agent_installed": sorted(agentenv.installed(base)),
        "machine": f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}",
        "targets": TARGETS,
    }
    result["held"] = {k: result[k] < v for k, v in TARGETS.items()}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    for key in ("agent_rss_mb", "agent_start_s", "agent_install_mb", "cli_help_s"):
        target = TARGETS.get(key)
        verdict = "" if target is None else (" PASS" if result[key] < target else " FAIL")
        print(f"{key:>22}: {result[key]}" + (f" (target < {target}){verdict}" if target else ""))
    for key in ("cli_help_cpu_s", "agent_install_cpu_mb", "agent_rss_anon_mb", "agent_rss_file_mb"):
        print(f"{key:>22}: {result[key]}")
    print(f"{'agent_floor_mb':>22}: {result['agent_floor_mb']}")
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return all(result["held"].values())


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
