"""What telemetry costs: Predict with and without metrics recording; controller ingest rate.

* ``predict``: the agent's Predict handler (``InferenceServicer.Predict``, called in-process:
  tensor decode, ``Predictor``'s runtime, encode) once with the real ``AgentMetrics`` and
  telemetry ``Window`` and once with no-op stand-ins for both; same model (digits MLP, batch
  1), same process, interleaved rounds whose order rotates. Recording lives in the servicer,
  not in ``Predictor`` (which stays bare), and the servicer has no switch, so "without" is a
  servicer given do-nothing objects: its in-flight set and latency deque are stand-ins whose
  methods are the builtin ``id`` (the cheapest C call there is, so "without" is not slowed by
  Python-level no-ops), and a ``LiveStats`` that watches nothing in both. Target: p50
  overhead below 2%.
* ``ingest``: a real Mosquitto and a real ``edge-controller``; 1,000 simulated devices
  register (one DeviceStatus each), then a few MQTT connections in this process publish
  Telemetry for them as fast as the broker takes it for ``INGEST_S`` seconds. The rate is what
  the controller took in (its ``edgefleet_controller_messages_total{channel="telemetry"}``
  minus what it dropped), per second. No target: a figure to track.

Writes ``bench/results/metrics.json``.
"""

from __future__ import annotations

import itertools
import json
import re
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, cast

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from rich.console import Console
from rich.table import Table

from edgefleet.agent.metrics import AgentMetrics
from edgefleet.agent.predictor import Predictor
from edgefleet.agent.runtime import LoadedModel, ModelRuntime
from edgefleet.agent.serving import InferenceServicer
from edgefleet.common import topics, wire
from edgefleet.common import types as t
from edgefleet.demo import digits
from edgefleet.demo.processes import Processes, free_port
from edgefleet.demo.stack import start_broker, start_controller
from edgefleet.edgectl.client import ControllerClient
from edgefleet.v1 import inference_pb2

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
from timing import timed  # noqa: E402

ITERATIONS = 20000
ROUNDS = 40
WARMUP = 500
OVERHEAD_TARGET = 0.02
DEVICES = 1000
CONNECTIONS = 4
INGEST_S = 10.0
RESULTS = Path(__file__).parent / "results" / "metrics.json"


class _Nothing:
    """A set and a deque that keep nothing: every method is the builtin ``id``."""

    add = discard = append = staticmethod(id)

    def __len__(self) -> int:
        return 0


class _NoWindow:
    """What ``InferenceServicer`` takes of ``sampling.Window``, recording nothing."""

    def __init__(self) -> None:
        self.in_flight = self.pending = _Nothing()


class _NoMetrics:
    """What ``InferenceServicer`` takes of ``AgentMetrics`` (valid requests touch no errors)."""

    def __init__(self) -> None:
        self.window = _NoWindow()


def servicer(predictor: Predictor, metrics: AgentMetrics) -> InferenceServicer:
    return InferenceServicer(predictor, device_id="bench", fleet="bench", metrics=metrics)


def predict_p50() -> dict[str, float]:
    trained = digits.train(digits.load_data(), hidden=32, seed=0)
    x = digits.load_data().x_test[:1].astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp:
        path = Path(tmp) / "digits.onnx"
        path.write_bytes(trained.onnx_bytes)
        m = t.Manifest(
            name="digits",
            version="1.0.0",
            model_digest="sha256:" + "0" * 64,
            model_size=len(trained.onnx_bytes),
            inputs=(t.TensorSpec("pixels", "float32", (-1, 64)),),
            outputs=(
                t.TensorSpec("probabilities", "float32", (-1, 10)),
                t.TensorSpec("label", "int64", (-1,)),
            ),
        )
        runtime = ModelRuntime.load(path, LoadedModel("digits:1.0.0", "a", m, m.model_digest))
    predictor = Predictor(runtime)
    request = inference_pb2.PredictRequest(inputs=[wire.array_to_pb("pixels", x)])
    context: Any = None  # valid requests never touch the context
    recorded = AgentMetrics()
    paths = {
        "with": servicer(predictor, recorded),
        "without": servicer(predictor, cast(AgentMetrics, _NoMetrics())),
    }
    calls = {name: (lambda s=s: s.Predict(request, context)) for name, s in paths.items()}
    for fn in calls.values():
        timed(fn, WARMUP)
    samples: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for r in range(ROUNDS):
        for name in names[r % 2 :] + names[: r % 2]:
            timed(calls[name], 2)
            samples[name] += timed(calls[name], ITERATIONS // ROUNDS)
        recorded.window.fold()  # what a scrape or the telemetry loop does, off the hot path
    return {name: float(np.percentile(v, 50)) for name, v in samples.items()}


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for name in ("messages", "dropped_messages", "malformed_messages"):
        found = re.search(
            rf'^edgefleet_controller_{name}_total{{channel="telemetry"}} (\S+)$', text, re.M
        )
        out[name] = float(found[1]) if found else 0.0
    return out


def publisher(url_port: int, client_id: str) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", url_port)
    client.loop_start()
    return client


def ingest_rate(console: Console) -> dict[str, float]:
    with (
        tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp,
        Processes(Path(tmp) / "logs") as procs,
    ):
        broker = start_broker(procs, Path(tmp), kind="mosquitto")
        port = int(broker.url.rsplit(":", 1)[1])
        metrics_port = free_port()
        controller = start_controller(
            procs, Path(tmp) / "controller", mqtt_url=broker.url,
            extra_args=["--metrics-port", str(metrics_port)], insecure=True,
        )  # fmt: skip
        ids = [f"sim-{i:04d}" for i in range(DEVICES)]
        clients = [publisher(port, f"bench-pub-{i}") for i in range(CONNECTIONS)]
        try:
            for device_id, client in zip(ids, itertools.cycle(clients), strict=False):
                status = t.DeviceStatus(device_id, "bench", t.InstallPhase.ACTIVE,
                                        active_release="digits:1.0.0")  # fmt: skip
                data = wire.status_to_pb(status).SerializeToString()
                client.publish(topics.status(device_id), data, qos=1, retain=False)
            with ControllerClient(controller.api, token=controller.admin_token()) as api:
                deadline = time.monotonic() + 60
                while len(api.list_devices("bench")) < DEVICES:
                    if time.monotonic() > deadline:
                        raise RuntimeError("the simulated devices never all registered")
                    time.sleep(0.2)
            payloads = [
                (topics.telemetry(d), wire.telemetry_to_pb(t.Telemetry(
                    d, "digits:1.0.0", 10.0, 100, 1, 1.5, 3.0, 4.0, cpu_percent=5.0,
                )).SerializeToString())
                for d in ids
            ]  # fmt: skip
            before = scrape(metrics_port)
            started = time.monotonic()
            sent = [0] * CONNECTIONS
            stop = threading.Event()

            def flood(i: int) -> None:
                client = clients[i]
                for topic, data in itertools.cycle(payloads[i::CONNECTIONS]):
                    if stop.is_set():
                        return
                    if client.publish(topic, data, qos=0).rc == mqtt.MQTT_ERR_SUCCESS:
                        sent[i] += 1

            threads = [threading.Thread(target=flood, args=(i,)) for i in range(CONNECTIONS)]
            with console.status(f"publishing telemetry of {DEVICES} devices for {INGEST_S:g}s"):
                for th in threads:
                    th.start()
                time.sleep(INGEST_S)
                stop.set()
                for th in threads:
                    th.join()
                time.sleep(1.0)  # what the broker still held reaches the controller
            elapsed = time.monotonic() - started
            after = scrape(metrics_port)
        finally:
            for client in clients:
                client.disconnect()
                client.loop_stop()
    received = after["messages"] - before["messages"]
    dropped = after["dropped_messages"] - before["dropped_messages"]
    malformed = after["malformed_messages"] - before["malformed_messages"]
    return {
        "published_msgs_per_s": sum(sent) / INGEST_S,
        "received_msgs_per_s": received / elapsed,
        "dropped_msgs_per_s": dropped / elapsed,
        "ingest_msgs_per_s": (received - dropped - malformed) / elapsed,
    }


def main() -> bool:
    """Run both measurements, print them, write the results; True when the overhead target held."""
    console = Console()
    with console.status(f"timing {ITERATIONS} Predict calls with and without metrics"):
        p50 = predict_p50()
    ingest = ingest_rate(console)
    overhead = p50["with"] / p50["without"] - 1.0
    result = {
        "model": "digits-mlp32 (batch 1)",
        "with_metrics_p50_us": round(p50["with"], 2),
        "without_metrics_p50_us": round(p50["without"], 2),
        "metrics_overhead_ratio": round(overhead, 4),
        "metrics_overhead_target": OVERHEAD_TARGET,
        "metrics_overhead_ok": overhead < OVERHEAD_TARGET,
        "devices": DEVICES,
        "connections": CONNECTIONS,
        **{k: round(v, 1) for k, v in ingest.items()},
    }
    table = Table(title="telemetry costs")
    for col in ("measure", "value", "target", "result"):
        table.add_column(col)
    verdict = "[green]PASS[/]" if result["metrics_overhead_ok"] else "[red]FAIL[/]"
    table.add_row("Predict p50 with metrics", f"{p50['with']:.1f} us", "", "")
    table.add_row("Predict p50 without metrics", f"{p50['without']:.1f} us", "", "")
    table.add_row("overhead at p50", f"{overhead:+.2%}", f"< {OVERHEAD_TARGET:.0%}", verdict)
    table.add_row("telemetry published", f"{ingest['published_msgs_per_s']:.0f} msg/s", "", "")
    table.add_row("controller ingest", f"{ingest['ingest_msgs_per_s']:.0f} msg/s", "(tracked)", "")
    table.add_row("controller dropped", f"{ingest['dropped_msgs_per_s']:.0f} msg/s", "", "")
    console.print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {RESULTS}")
    return bool(result["metrics_overhead_ok"])


if __name__ == "__main__":
    raise SystemExit(0 if main() else 1)
