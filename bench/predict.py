"""Predict latency: bare ONNX Runtime vs the agent's in-process path vs Predict over gRPC.

Same model (the digits MLP, batch 1), same process, same run:

* ``bare``: ``InferenceSession.run`` on the session the agent loaded;
* ``inproc``: ``Predictor.predict``, the path the agent's servicer wraps (input checks, the
  atomic swap read);
* ``grpc``: ``InferenceService.Predict`` on a real ``InferenceServer`` bound to loopback port 0,
  called through edgectl's ``InferenceClient`` (tensor encode and decode included);
* ``floor`` (context, no target): the same client against a plain gRPC server whose servicer
  answers at once with canned outputs: what gRPC in Python costs on this machine before the
  agent does anything.

The local paths, on an image model with a 1x3x224x224 float32 input (602 112 bytes; global
average pool, a 3x10 dense layer, softmax: little work, so the transport shows):

* ``image_bare``: ``InferenceSession.run`` on it;
* ``image_grpc``: Predict over TCP loopback, the tensor inline;
* ``uds``: Predict over the agent's fast local path (``fastpath``, no gRPC: the agent's
  ``FastServer`` on ``predict.fast.sock``), the tensor inline (``request_parts``: the array's
  own buffer is sent), outputs decoded to arrays as ``InferenceClient`` does;
* ``shm``: the fast path with the tensor in shared memory, the client's default for large
  tensors: a memfd region the connection registered once (``fastpath.REGISTER``), which the
  agent mapped once and the model reads in place; each call writes the tensor into it and
  names it (``FastPathClient.predict_arrays``: the copy into the region is included);
  ``shm_sealed``: a sealed memfd passed with each request instead (``Stager.sealed_request``,
  the mode before registration); ``shm_inplace``: the registered region with the tensor
  written there by the app itself (``FastPathClient.lease``: no copy in the call, as Triton's
  clients use theirs); ``shm_named``: the tensor in a named ``/dev/shm`` region,
  which the agent copies out (``preadv``);
* ``uds_grpc``, ``shm_grpc``: the same two over gRPC on the agent's ``predict.sock``
  (``InferenceClient`` on ``unix:``), what the local paths cost before the fast one.

Each path is warmed up, then timed for ``ITERATIONS`` calls in short blocks, in rounds that
rotate the order of the paths, so machine noise hits all of them alike. Targets: inproc p50
at most 5% over bare; grpc p50 at most 150 us over bare; on the image model, uds p50 at most
150 us and shm p50 at most 50 us over its bare p50 (``uds_ok``, ``shm_ok``, the fast path).
The digits model's servers run in this process. The image model's (its gRPC server on TCP and
on ``predict.sock``, and the ``FastServer``) run in a separate process (``--serve DIR``: the
agent's own ``InferenceServicer``, ``InferenceServer`` and ``FastServer``, as ``edge-agent
run`` builds them, on the same model), so a call pays for what an app's call to the agent
pays and not for this process's threads taking the GIL from the client (``"server"`` in the
results says so). The gRPC clients stay here; the fast-path rows' client runs in an app
process of its own (``bench/fastapp.py``: a ``FastPathClient`` and no gRPC server or channel,
as an app that uses the fast path has it), which times its calls there, block by block, in
the same rotation (``"fast_client"`` in the results). Writes ``bench/results/predict.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console
from rich.table import Table

from edgefleet.agent.fastserver import FastServer
from edgefleet.agent.metrics import AgentMetrics
from edgefleet.agent.predictor import Predictor
from edgefleet.agent.runtime import LoadedModel, ModelRuntime
from edgefleet.agent.serving import InferenceServer, InferenceServicer
from edgefleet.common import digests, fastpath, wire
from edgefleet.common import types as t
from edgefleet.demo import digits
from edgefleet.edgectl.inference import InferenceClient
from edgefleet.v1 import inference_pb2, inference_pb2_grpc

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
from timing import timed  # noqa: E402

ITERATIONS = 2000
ROUNDS = 40  # blocks of ITERATIONS / ROUNDS calls per path, order rotating every round
WARMUP = 300
BLOCK_WARMUP = 2  # untimed calls that start each block, so no path pays for the switch
INPROC_RATIO_TARGET = 1.05
GRPC_OVERHEAD_TARGET_US = 150.0
UDS_OVERHEAD_TARGET_US = 150.0
SHM_OVERHEAD_TARGET_US = 50.0
IMAGE_MODEL = "pool-dense image classifier (1x3x224x224 float32)"
IMAGE_SHAPE = (1, 3, 224, 224)
RESULTS = Path(__file__).parent / "results" / "predict.json"
SERVER = (
    "separate process (InferenceServicer + InferenceServer + FastServer, bench/predict.py --serve)"
)
FAST_CLIENT = "app process of its own (FastPathClient, no gRPC in it: bench/fastapp.py)"
SERVER_START_S = 60.0
MODEL = "digits-mlp32 (batch 1)"


class Echo(inference_pb2_grpc.InferenceServiceServicer):
    """Answers every Predict with the same precomputed reply: the transport floor."""

    def __init__(self, reply: inference_pb2.PredictResponse) -> None:
        self._reply = reply

    def Predict(
        self, request: inference_pb2.PredictRequest, context: grpc.ServicerContext
    ) -> inference_pb2.PredictResponse:
        return self._reply

    def ModelInfo(
        self, request: inference_pb2.ModelInfoRequest, context: grpc.ServicerContext
    ) -> inference_pb2.ModelInfoResponse:
        return inference_pb2.ModelInfoResponse(device_id="echo")


def echo_server(reply: inference_pb2.PredictResponse) -> tuple[grpc.Server, str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(Echo(reply), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


def manifest(onnx_bytes: bytes) -> t.Manifest:
    return t.Manifest(
        name="digits",
        version="1.0.0",
        model_digest=digests.of_bytes(onnx_bytes),
        model_size=len(onnx_bytes),
        inputs=(t.TensorSpec("pixels", "float32", (-1, 64)),),
        outputs=(
            t.TensorSpec("probabilities", "float32", (-1, 10)),
            t.TensorSpec("label", "int64", (-1,)),
        ),
    )


def image_model() -> bytes:
    """A classifier on a 1x3x224x224 image: global average pool, 3x10 dense, softmax."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 10)).astype(np.float32)
    b = rng.standard_normal(10).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("Gemm", ["flat", "w", "b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "image",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, list(IMAGE_SHAPE))],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def image_manifest(onnx_bytes: bytes) -> t.Manifest:
    return t.Manifest(
        name="image",
        version="1.0.0",
        model_digest=digests.of_bytes(onnx_bytes),
        model_size=len(onnx_bytes),
        inputs=(t.TensorSpec("image", "float32", IMAGE_SHAPE),),
        outputs=(t.TensorSpec("probabilities", "float32", (1, 10)),),
    )


Block = Callable[[int], list[float]]
"""A path timed for N calls: its samples in microseconds."""


def here(fn: Callable[[], object]) -> Block:
    """A path called in this process."""
    return lambda n: timed(fn, n)


def measure(paths: dict[str, Block]) -> dict[str, np.ndarray]:
    for block in paths.values():
        block(WARMUP)
    samples: dict[str, list[float]] = {name: [] for name in paths}
    names = list(paths)
    per_round = ITERATIONS // ROUNDS
    for r in range(ROUNDS):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            paths[name](BLOCK_WARMUP)
            samples[name] += paths[name](per_round)
    return {name: np.asarray(v) for name, v in samples.items()}


class App:
    """``bench/fastapp.py`` in its own process: the fast-path rows' client, as an app has it
    (no gRPC server or channel beside it); each of its paths a ``Block`` timed there."""

    def __init__(
        self, socket_path: str, directory: Path, picture: np.ndarray, expected: np.ndarray
    ):
        np.save(directory / "picture.npy", picture)
        np.save(directory / "expected.npy", expected)
        self._proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("fastapp.py")), socket_path,
             str(directory / "picture.npy"), str(directory / "expected.npy")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        ready = self._read()
        if "ready" not in ready:
            self.close()
            raise RuntimeError(f"the bench's app process did not start: {ready.get('error')}")
        self.paths: list[str] = ready["ready"]

    def _read(self) -> dict[str, Any]:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the bench's app process ended (exit {self._proc.wait()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def block(self, path: str) -> Block:
        def run(n: int) -> list[float]:
            assert self._proc.stdin is not None
            self._proc.stdin.write(json.dumps({"path": path, "n": n}) + "\n")
            self._proc.stdin.flush()
            samples: list[float] = self._read()["samples"]
            return samples

        return run

    def close(self) -> None:
        stop_server(self._proc)


def report(samples: dict[str, np.ndarray]) -> dict[str, Any]:
    p50 = {k: float(np.percentile(v, 50)) for k, v in samples.items()}
    p99 = {k: float(np.percentile(v, 99)) for k, v in samples.items()}
    ratio = p50["inproc"] / p50["bare"]
    overhead = p50["grpc"] - p50["bare"]
    uds = p50["uds"] - p50["image_bare"]
    shm = p50["shm"] - p50["image_bare"]
    return {
        "model": MODEL,
        "iterations": int(min(len(v) for v in samples.values())),
        **{f"{k}_p50_us": round(v, 2) for k, v in p50.items()},
        **{f"{k}_p99_us": round(v, 2) for k, v in p99.items()},
        "inproc_over_bare_p50": round(ratio, 4),
        "inproc_over_bare_p50_target": INPROC_RATIO_TARGET,
        "inproc_ok": ratio <= INPROC_RATIO_TARGET,
        "grpc_minus_bare_p50_us": round(overhead, 2),
        "grpc_minus_bare_p50_target_us": GRPC_OVERHEAD_TARGET_US,
        "grpc_ok": overhead <= GRPC_OVERHEAD_TARGET_US,
        "floor_minus_bare_p50_us": round(p50["floor"] - p50["bare"], 2),
        "grpc_minus_floor_p50_us": round(p50["grpc"] - p50["floor"], 2),
        "image_model": IMAGE_MODEL,
        "uds_minus_bare_p50_us": round(uds, 2),
        "uds_minus_bare_p50_target_us": UDS_OVERHEAD_TARGET_US,
        "uds_ok": uds <= UDS_OVERHEAD_TARGET_US,
        "shm_minus_bare_p50_us": round(shm, 2),
        "shm_minus_bare_p50_target_us": SHM_OVERHEAD_TARGET_US,
        "shm_ok": shm <= SHM_OVERHEAD_TARGET_US,
        "image_grpc_minus_bare_p50_us": round(p50["image_grpc"] - p50["image_bare"], 2),
        "uds_grpc_minus_bare_p50_us": round(p50["uds_grpc"] - p50["image_bare"], 2),
        "shm_grpc_minus_bare_p50_us": round(p50["shm_grpc"] - p50["image_bare"], 2),
        "shm_sealed_minus_bare_p50_us": round(p50["shm_sealed"] - p50["image_bare"], 2),
        "shm_inplace_minus_bare_p50_us": round(p50["shm_inplace"] - p50["image_bare"], 2),
        "shm_named_minus_bare_p50_us": round(p50["shm_named"] - p50["image_bare"], 2),
    }


def show(result: dict[str, Any], console: Console) -> None:
    t1 = Table(title=f"Predict latency, {result['model']}, {result['iterations']} calls each")
    for col in ("path", "p50 (us)", "p99 (us)"):
        t1.add_column(col, justify="right" if col != "path" else "left")
    for name, label in (("bare", "bare InferenceSession.run"), ("inproc", "agent in-process"),
                        ("grpc", "Predict over gRPC (loopback)"),
                        ("floor", "gRPC echo, no model (floor)")):  # fmt: skip
        t1.add_row(label, f"{result[f'{name}_p50_us']:.1f}", f"{result[f'{name}_p99_us']:.1f}")
    console.print(t1)
    t3 = Table(title=f"Local paths, {result['image_model']}")
    for col in ("path", "p50 (us)", "p99 (us)"):
        t3.add_column(col, justify="right" if col != "path" else "left")
    for name, label in (("image_bare", "bare InferenceSession.run"),
                        ("image_grpc", "Predict over gRPC (loopback TCP)"),
                        ("uds_grpc", "gRPC over the Unix socket"),
                        ("shm_grpc", "gRPC over the Unix socket + shared memory"),
                        ("uds", "fast local path (no gRPC)"),
                        ("shm", "fast local path + registered region (read in place)"),
                        ("shm_sealed", "fast local path + sealed memfd per request"),
                        ("shm_inplace", "fast local path + region written in place"),
                        ("shm_named", "fast local path + named region (copied)")):  # fmt: skip
        t3.add_row(label, f"{result[f'{name}_p50_us']:.1f}", f"{result[f'{name}_p99_us']:.1f}")
    console.print(t3)
    t2 = Table(title="targets")
    for col in ("measure", "value", "target", "result"):
        t2.add_column(col)
    verdict = {True: "[green]PASS[/]", False: "[red]FAIL[/]"}
    t2.add_row("inproc / bare at p50", f"{result['inproc_over_bare_p50']:.3f}",
               f"<= {INPROC_RATIO_TARGET}", verdict[result["inproc_ok"]])  # fmt: skip
    t2.add_row("grpc - bare at p50", f"{result['grpc_minus_bare_p50_us']:.1f} us",
               f"<= {GRPC_OVERHEAD_TARGET_US:g} us", verdict[result["grpc_ok"]])  # fmt: skip
    t2.add_row("uds - bare at p50 (image)", f"{result['uds_minus_bare_p50_us']:.1f} us",
               f"<= {UDS_OVERHEAD_TARGET_US:g} us", verdict[result["uds_ok"]])  # fmt: skip
    t2.add_row("shm - bare at p50 (image)", f"{result['shm_minus_bare_p50_us']:.1f} us",
               f"<= {SHM_OVERHEAD_TARGET_US:g} us", verdict[result["shm_ok"]])  # fmt: skip
    console.print(t2)
    console.print(
        f"gRPC alone (echo floor) costs {result['floor_minus_bare_p50_us']:.1f} us over bare on "
        f"this machine; the agent adds {result['grpc_minus_floor_p50_us']:.1f} us on top of it."
    )


def serve(directory: Path) -> None:
    """The image model's servers, in their own process (``--serve DIR``): the agent's
    ``InferenceServicer`` behind an ``InferenceServer`` (TCP and ``predict.sock``) and a
    ``FastServer``, on ``DIR/image.onnx``; their endpoints written to ``DIR/endpoints.json``;
    served until stdin closes (the bench ends, or dies)."""
    path = directory / "image.onnx"
    im = image_manifest(path.read_bytes())
    image = ModelRuntime.load(path, LoadedModel("image:1.0.0", "a", im, im.model_digest))
    servicer = InferenceServicer(
        Predictor(image), device_id="bench", fleet="bench", metrics=AgentMetrics()
    )
    server = InferenceServer(servicer, listen="127.0.0.1:0", socket_path=directory / "predict.sock")
    tcp = server.start()
    server.set_serving(True)
    fast = FastServer(
        servicer,
        directory / fastpath.DEFAULT_FAST_SOCKET,
        max_connections=8,
        max_message_bytes=16 << 20,
    )
    fast.start()
    ends = {"tcp": tcp, "unix": server.socket_endpoint, "fast": str(fast.path), "pid": os.getpid()}
    ready = directory / "endpoints.json"
    ready.with_suffix(".tmp").write_text(json.dumps(ends))
    ready.with_suffix(".tmp").rename(ready)
    try:
        sys.stdin.read()
    finally:
        fast.stop()
        server.stop()


def start_server(directory: Path) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """Start ``serve(directory)`` in a new process; it and its endpoints once it listens."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(directory)], stdin=subprocess.PIPE, text=True
    )
    ready = directory / "endpoints.json"
    deadline = time.monotonic() + SERVER_START_S
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_server(proc)
            raise RuntimeError(f"the bench's server process did not start (exit {proc.poll()})")
        time.sleep(0.05)
    return proc, json.loads(ready.read_text())


def stop_server(proc: subprocess.Popen[str]) -> None:
    if proc.stdin is not None:
        proc.stdin.close()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> bool:
    """Run the benchmark, print it, write the results; True when the digits targets hold
    (the local paths' verdicts are reported, not gated on)."""
    console = Console()
    with console.status("training the digits model"):
        trained = digits.train(digits.load_data(), hidden=32, seed=0)
    x = digits.load_data().x_test[:1].copy()
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        path = Path(tmp) / "digits.onnx"
        path.write_bytes(trained.onnx_bytes)
        m = manifest(trained.onnx_bytes)
        runtime = ModelRuntime.load(path, LoadedModel("digits:1.0.0", "a", m, m.model_digest))
        predictor = Predictor(runtime)
        servicer = InferenceServicer(
            predictor, device_id="bench", fleet="bench", metrics=AgentMetrics()
        )
        server = InferenceServer(servicer, listen="127.0.0.1:0")
        endpoint = server.start()
        server.set_serving(True)
        session, names, feed = runtime.session, runtime.output_names, {"pixels": x}
        canned = inference_pb2.PredictResponse(
            outputs=[wire.array_to_pb(k, v) for k, v in predictor.predict(feed).items()],
            release="digits:1.0.0",
            device_id="bench",
        )
        floor_server, floor_endpoint = echo_server(canned)
        image_path = Path(tmp) / "image.onnx"
        image_path.write_bytes(image_model())
        im = image_manifest(image_path.read_bytes())
        image = ModelRuntime.load(image_path, LoadedModel("image:1.0.0", "a", im, im.model_digest))
        image_proc, ends = start_server(Path(tmp))
        image_endpoint, unix, fast_path = ends["tcp"], ends["unix"], ends["fast"]
        picture = np.random.default_rng(1).standard_normal(IMAGE_SHAPE).astype(np.float32)
        image_feed = {"image": picture}
        app: App | None = None
        try:
            with (
                InferenceClient(endpoint, name="bench agent") as client,
                InferenceClient(floor_endpoint, name="echo") as floor,
                InferenceClient(image_endpoint, name="image agent") as image_tcp,
                InferenceClient(unix, name="image agent", shm_threshold=None) as image_uds,
                InferenceClient(unix, name="image agent") as image_shm,
            ):
                expected = image_tcp.predict(image_feed).outputs["probabilities"]
                for other in (image_uds, image_shm):  # the same answer by every path
                    got = other.predict(image_feed).outputs["probabilities"]
                    assert got.tobytes() == expected.tobytes()
                app = App(fast_path, Path(tmp), picture, expected)  # checks its paths' answers
                image_names = image.output_names
                paths: dict[str, Block] = {
                    "bare": here(lambda: session.run(names, feed)),
                    "inproc": here(lambda: predictor.predict(feed)),
                    "grpc": here(lambda: client.predict(feed)),
                    "floor": here(lambda: floor.predict(feed)),
                    "image_bare": here(lambda: image.session.run(image_names, image_feed)),
                    "image_grpc": here(lambda: image_tcp.predict(image_feed)),
                    "uds_grpc": here(lambda: image_uds.predict(image_feed)),
                    "shm_grpc": here(lambda: image_shm.predict(image_feed)),
                    **{name: app.block(name) for name in app.paths},
                }
                with console.status(f"timing {ITERATIONS} calls of each path"):
                    samples = measure(paths)
        finally:
            if app is not None:
                app.close()
            server.stop()
            stop_server(image_proc)
            floor_server.stop(None)
    result = report(samples)
    result["server"] = SERVER
    result["fast_client"] = FAST_CLIENT
    show(result, console)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {RESULTS}")
    return bool(result["inproc_ok"] and result["grpc_ok"])


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(Path(sys.argv[2]))
        raise SystemExit(0)
    raise SystemExit(0 if main() else 1)
