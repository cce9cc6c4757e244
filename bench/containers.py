"""Container releases: Predict through a release container vs in-process, and a quick switch.

One real agent (``edgefleet.agent.daemon.Agent``, in this process) on a real Mosquitto, the
local dockerd and a local registry (Debian's ``docker-registry``); the bench acts as the
controller, as ``tests/containers`` do: it builds release images the way ``edgectl release
create --runtime container`` does (``controller/images.py``: the runtime base plus a layer with
the model), pushes them, signs manifests naming their digests, serves the model blobs over the
ArtifactService and publishes signed desired states. Same model (the digits MLP, batch 1):

1. ``digits:1.0.0`` in-process: ``inproc_p50_us``, the p50 of Predict calls to the agent;
2. ``digits:1.1.0``, the same model as a container release: ``container_p50_us``, the same
   calls, which the agent forwards to its container over loopback gRPC;
3. ``digits:1.2.0``, another model as a container release, whose image is pushed and then
   removed from this dockerd, so the device holds the base layers (1.1.0 runs on them) but
   not the release's own layer: ``switch_s`` is the time from publishing its desired state to
   the first Predict that 1.2.0 answers (MQTT, model blob fetch and check, image pull and
   digest check, container start, health check, switch); ``pulled_bytes`` what the agent
   pulled for it (``edgefleet_image_pull_bytes``), ``image_bytes`` the whole image as the
   registry holds it (config and every layer, compressed: what a device with none of its
   layers would pull).

Predict calls are timed one at a time after a warm-up, from one client channel. Writes
``bench/results/containers.json`` with exactly those five keys. Without Docker, the runtime
base image or ``docker-registry`` it says so and writes nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from rich.console import Console
from rich.table import Table

from edgefleet.agent import config
from edgefleet.agent import containers as agent_containers
from edgefleet.agent.daemon import Agent
from edgefleet.common import desired, digests, oci, signing, topics, wire
from edgefleet.common import types as t
from edgefleet.common.artifacts import ArtifactServicer, BlobStore
from edgefleet.controller import images
from edgefleet.demo import digits
from edgefleet.demo.processes import free_port, port_open
from edgefleet.demo.stack import mosquitto_binary
from edgefleet.v1 import artifact_pb2_grpc, inference_pb2, inference_pb2_grpc

ITERATIONS = 2000
WARMUP = 200
SWITCH_TIMEOUT_S = 300.0
RESULTS = Path(__file__).parent / "results" / "containers.json"
MODEL = "digits-mlp32 (batch 1)"
REPO = "bench/digits"
DEVICE = "bench-containers"
INPUTS = (t.TensorSpec("pixels", "float32", (-1, 64)),)
OUTPUTS = (
    t.TensorSpec("probabilities", "float32", (-1, 10)),
    t.TensorSpec("label", "int64", (-1,)),
)


def missing() -> str:
    """Why this bench cannot run here ("" when it can)."""
    try:
        client = images.client()
    except Exception as exc:
        return f"Docker does not answer ({exc})"
    try:
        client.images.get(images.RUNTIME_BASE)
    except Exception:
        return f"the runtime base {images.RUNTIME_BASE} is missing (deploy/docker/runtime-image.sh)"
    finally:
        client.close()
    if not (shutil.which("docker-registry") or Path("/usr/bin/docker-registry").is_file()):
        return "docker-registry is not installed (apt-get install docker-registry)"
    if mosquitto_binary() is None:
        return "mosquitto is not installed (apt-get install mosquitto)"
    return ""


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 20
    while not port_open(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not listen on port {port}")
        time.sleep(0.05)


@contextlib.contextmanager
def process(argv: list[str], *, port: int, log: Path, what: str) -> Iterator[None]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_port(port, proc, what)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def broker(root: Path, port: int) -> contextlib.AbstractContextManager[None]:
    conf = root / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    binary = mosquitto_binary() or "mosquitto"
    return process([binary, "-c", str(conf)], port=port, log=root / "mosquitto.log", what=binary)


def registry(root: Path, port: int) -> contextlib.AbstractContextManager[None]:
    conf = root / "registry.yml"
    conf.write_text(
        "version: 0.1\nlog:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'registry'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    binary = shutil.which("docker-registry") or "/usr/bin/docker-registry"
    argv = [binary, "serve", str(conf)]
    return process(argv, port=port, log=root / "registry.log", what="docker-registry")


def image_size(host: str, version: str) -> int:
    """The registry's bytes of one release image: its config plus every (compressed) layer."""
    url = f"http://{host}/v2/{REPO}/{images.IMAGE_SUFFIX}/manifests/{oci.sanitize_tag(version)}"
    request = urllib.request.Request(
        url,
        headers={
            "Accept": "application/vnd.docker.distribution.manifest.v2+json, "
            "application/vnd.oci.image.manifest.v1+json"
        },
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        manifest = json.loads(reply.read())
    return int(manifest["config"]["size"]) + sum(int(x["size"]) for x in manifest["layers"])


class Fleet:
    """What the controller would do for the bench's one device, done by the bench itself."""

    def __init__(self, root: Path, *, broker_url: str, registry_host: str) -> None:
        self.key = signing.generate()
        self.key_file = root / "trusted.pem"
        self.key_file.write_text(signing.public_pem(self.key.public_key()))
        self.store = BlobStore(root / "blobs")
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        artifact_pb2_grpc.add_ArtifactServiceServicer_to_server(
            ArtifactServicer(self.store), self.server
        )
        self.artifacts = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()
        self.source = f"oci://{registry_host}/{REPO}"
        self.target = oci.RegistryRef.parse(f"{registry_host}/{REPO}")
        self.docker = images.client()
        self.built: list[str] = []
        host, port = broker_url.removeprefix("mqtt://").rsplit(":", 1)
        self.mqtt = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-containers-ctl")
        self.mqtt.connect(host, int(port))
        self.mqtt.loop_start()
        self.generation = 0

    def release(self, model: bytes, *, version: str, container: bool) -> t.Manifest:
        """Sign (and for a container release build and push) a release of ``model``."""
        image = ""
        if container:
            built = images.build_release_image(
                self.docker, t.ReleaseRef("digits", version), model=model, golden=b""
            )
            self.built.append(built.tag)
            image = built.digest
        self.store.put(model)
        manifest = t.Manifest(
            name="digits",
            version=version,
            model_digest=digests.of_bytes(model),
            model_size=len(model),
            inputs=INPUTS,
            outputs=OUTPUTS,
            runtime=agent_containers.CONTAINER if container else "onnxruntime",
            health=t.HealthPolicy(smoke_inference=True),
            image=image,
        )
        if container:
            images.push_image(self.docker, manifest, self.target)
        return manifest

    def deploy(self, manifest: t.Manifest) -> None:
        payload = wire.encode_manifest(manifest)
        envelope = signing.sign(payload, signing.MANIFEST_TYPE, self.key)
        self.generation += 1
        sealed = desired.seal(
            device_id=DEVICE,
            fleet="bench",
            generation=self.generation,
            signed_manifest=envelope,
            rollout_id=f"bench-{self.generation}",
            issued_at_ms=int(time.time() * 1000),
            artifact_sources=[self.source],
            key=self.key,
        )
        self.mqtt.publish(topics.desired(DEVICE), sealed, qos=1, retain=True).wait_for_publish(10)

    def close(self) -> None:
        self.mqtt.publish(topics.desired(DEVICE), b"", qos=1, retain=True).wait_for_publish(10)
        self.mqtt.loop_stop()
        self.mqtt.disconnect()
        self.server.stop(0).wait(5)
        for c in self.docker.containers.list(
            all=True, filters={"label": f"{agent_containers.LABEL_DEVICE}={DEVICE}"}
        ):
            c.remove(force=True)
        repo = agent_containers.agent_tag(DEVICE, "")[0]
        tags = [tag for i in self.docker.images.list(name=repo) for tag in i.tags] + self.built
        for tag in tags:
            with contextlib.suppress(Exception):
                self.docker.images.remove(tag, force=True)
        self.docker.close()


class Client:
    """Predict calls to the agent, one channel."""

    def __init__(self, endpoint: str, x: np.ndarray) -> None:
        self.channel = grpc.insecure_channel(endpoint)
        self.stub = inference_pb2_grpc.InferenceServiceStub(self.channel)
        self.request = inference_pb2.PredictRequest(inputs=[wire.array_to_pb("pixels", x)])

    def release(self) -> str:
        """The release that answers (or "" when none does now)."""
        try:
            return str(self.stub.Predict(self.request, timeout=10).release)
        except grpc.RpcError:
            return ""

    def wait_serving(self, release: str, *, timeout_s: float = SWITCH_TIMEOUT_S) -> float:
        """Seconds until ``release`` answers a Predict."""
        start = time.perf_counter()
        while self.release() != release:
            if time.perf_counter() - start > timeout_s:
                raise RuntimeError(f"{release} did not serve within {timeout_s:g}s")
            time.sleep(0.005)
        return time.perf_counter() - start

    def p50_us(self, n: int) -> float:
        call: Callable[..., Any] = self.stub.Predict
        for _ in range(WARMUP):
            call(self.request, timeout=10)
        samples = []
        for _ in range(n):
            start = time.perf_counter_ns()
            call(self.request, timeout=10)
            samples.append((time.perf_counter_ns() - start) / 1000.0)
        return float(np.percentile(samples, 50))

    def close(self) -> None:
        self.channel.close()


def pulled_bytes(agent: Agent) -> int:
    return int(agent.metrics.registry.get_sample_value("edgefleet_image_pull_bytes_total") or 0)


def measure(root: Path, *, iterations: int) -> dict[str, Any]:
    data = digits.load_data()
    first = digits.train(data, hidden=32, seed=0).onnx_bytes
    second = digits.train(data, hidden=48, seed=1).onnx_bytes
    registry_port = free_port()
    host = f"127.0.0.1:{registry_port}"
    mqtt_port = free_port()
    broker_url = f"mqtt://127.0.0.1:{mqtt_port}"
    with contextlib.ExitStack() as stack:
        stack.enter_context(registry(root, registry_port))
        stack.enter_context(broker(root, mqtt_port))
        fleet = Fleet(root, broker_url=broker_url, registry_host=host)
        stack.callback(fleet.close)
        inproc = fleet.release(first, version="1.0.0", container=False)
        same = fleet.release(first, version="1.1.0", container=True)
        other = fleet.release(second, version="1.2.0", container=True)
        fleet.docker.images.remove(other.image, force=True)  # the device lacks its own layer
        image_bytes = image_size(host, other.version)

        settings = config.merge(
            {
                "device_id": DEVICE,
                "fleet": "bench",
                "mqtt": broker_url,
                "controller": fleet.artifacts,
                "data_dir": root / "agent",
                "predict_listen": "127.0.0.1:0",
                "metrics_port": -1,
                "trusted_keys": (fleet.key_file,),
                "telemetry_interval": 5.0,
            }
        )
        agent = Agent(settings)
        endpoints = agent.start()
        stack.callback(agent.stop)
        client = Client(endpoints.predict, data.x_test[:1].astype(np.float32))
        stack.callback(client.close)

        fleet.deploy(inproc)
        client.wait_serving(str(inproc.ref))
        inproc_p50 = client.p50_us(iterations)
        fleet.deploy(same)
        client.wait_serving(str(same.ref))
        container_p50 = client.p50_us(iterations)
        before = pulled_bytes(agent)
        start = time.perf_counter()
        fleet.deploy(other)
        client.wait_serving(str(other.ref))
        switch_s = time.perf_counter() - start
        pulled = pulled_bytes(agent) - before
    return {
        "container_p50_us": round(container_p50, 2),
        "inproc_p50_us": round(inproc_p50, 2),
        "switch_s": round(switch_s, 3),
        "pulled_bytes": pulled,
        "image_bytes": image_bytes,
    }


def show(result: dict[str, Any], console: Console, *, iterations: int) -> None:
    t1 = Table(title=f"Predict through the agent, {MODEL}, {iterations} calls each")
    t1.add_column("release runs", justify="left")
    t1.add_column("p50 (us)", justify="right")
    t1.add_row("in-process (ONNX Runtime in the agent)", f"{result['inproc_p50_us']:.1f}")
    t1.add_row("in its container (forwarded over gRPC)", f"{result['container_p50_us']:.1f}")
    console.print(t1)
    t2 = Table(title="A new container release whose base layers the device has")
    t2.add_column("figure", justify="left")
    t2.add_column("value", justify="right")
    t2.add_row("desired state -> serving", f"{result['switch_s']:.2f} s")
    t2.add_row("bytes pulled", f"{result['pulled_bytes']:,}")
    t2.add_row("the whole image (registry)", f"{result['image_bytes']:,}")
    share = result["pulled_bytes"] / result["image_bytes"] if result["image_bytes"] else 0.0
    t2.add_row("pulled / whole", f"{share:.2%}")
    console.print(t2)


def main(argv: list[str] | None = None) -> bool | None:
    parser = argparse.ArgumentParser(prog="bench/containers.py", description=__doc__)
    parser.add_argument("--iterations", type=int, default=ITERATIONS, help="Predict calls timed")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    args = parser.parse_args(argv or [])
    console = Console()
    why = missing()
    if why:
        console.print(f"[yellow]containers: skipped: {why}[/]")
        return None
    with tempfile.TemporaryDirectory(prefix="bench-containers-") as tmp:
        result = measure(Path(tmp), iterations=args.iterations)
    show(result, console, iterations=args.iterations)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {args.out}")
    return bool(0 < result["pulled_bytes"] < result["image_bytes"])  # the base was not pulled


if __name__ == "__main__":
    sys.exit(0 if main(sys.argv[1:]) is not False else 1)
