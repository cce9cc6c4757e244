"""Test doubles of the controller's side of the wire, real all the way down.

* ``Signer``: an Ed25519 key (public half written to a PEM file for ``--trusted-key``) that
  signs manifests and seals desired states exactly as the controller does.
* ``ArtifactServer``: a real gRPC ``ArtifactService`` on port 0 serving a ``BlobStore``; it
  records every Fetch (digest, offset) and can be slowed down (small chunks, a pause each).
* ``Watcher``: a paho client on a device's topics and its fleet's presence, decoding what the
  agent publishes; ``publish_desired`` puts a desired state retained with QoS 1.
* ``wait_for``: polling with a generous deadline, never a sleep as an assertion.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.common import desired, digests, signing, topics, wire
from edgefleet.common import types as t
from edgefleet.common.artifacts import ArtifactServicer, BlobStore
from edgefleet.v1 import artifact_pb2, artifact_pb2_grpc, inference_pb2, inference_pb2_grpc

T = TypeVar("T")
DIGITS_INPUTS = (t.TensorSpec("pixels", "float32", (-1, 64)),)
DIGITS_OUTPUTS = (
    t.TensorSpec("probabilities", "float32", (-1, 10)),
    t.TensorSpec("label", "int64", (-1,)),
)
_ids = itertools.count(1)


def unique_id(prefix: str = "dev") -> str:
    return f"{prefix}-{int(time.time() * 1000) % 1_000_000}-{next(_ids)}"


def wait_for(
    what: str, probe: Callable[[], T | None], *, timeout: float = 20.0, every: float = 0.02
) -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


class Ticks:
    """A clock (or timer) that moves only when read: each reading is ``step`` seconds after the
    one before, whatever the machine's speed. Timed one at a time, every call the agent times
    takes exactly ``step`` (change it between phases of a test); thread-safe."""

    def __init__(self, step: float) -> None:
        self.step = step
        self._now = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            self._now += self.step
            return self._now


# --- signing --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Release:
    manifest: t.Manifest
    signed_manifest: signing.Envelope
    manifest_digest: str
    model: bytes
    golden: bytes | None = None

    @property
    def ref(self) -> str:
        return str(self.manifest.ref)


class Signer:
    def __init__(self, directory: Path, name: str = "trusted") -> None:
        self.key = signing.generate()
        self.key_file = directory / f"{name}.pem"
        self.key_file.write_text(signing.public_pem(self.key.public_key()))

    def release(
        self,
        model: bytes,
        *,
        version: str = "1.0.0",
        name: str = "digits",
        health: t.HealthPolicy | None = None,
        inputs: Sequence[t.TensorSpec] = DIGITS_INPUTS,
        outputs: Sequence[t.TensorSpec] = DIGITS_OUTPUTS,
        digest: str | None = None,
        size: int | None = None,
        golden: bytes | None = None,
        encoding: str = "",
        annotations: dict[str, str] | None = None,
    ) -> Release:
        manifest = t.Manifest(
            name=name,
            version=version,
            model_digest=digest or digests.of_bytes(model),
            model_size=len(model) if size is None else size,
            inputs=tuple(inputs),
            outputs=tuple(outputs),
            health=health or t.HealthPolicy(smoke_inference=True),
            golden_digest=digests.of_bytes(golden) if golden is not None else "",
            golden_size=len(golden) if golden is not None else 0,
            model_encoding=encoding,
            annotations=annotations or {},
        )
        payload = wire.encode_manifest(manifest)
        env = signing.sign(payload, signing.MANIFEST_TYPE, self.key)
        return Release(manifest, env, digests.of_bytes(payload), model, golden)

    def desired(
        self,
        release: Release,
        *,
        device_id: str,
        generation: int,
        fleet: str = "lab",
        sources: Sequence[str] = (),
        key: signing.Ed25519PrivateKey | None = None,
    ) -> bytes:
        return desired.seal(
            device_id=device_id,
            fleet=fleet,
            generation=generation,
            signed_manifest=release.signed_manifest,
            rollout_id=f"rollout-{generation}",
            issued_at_ms=int(time.time() * 1000),
            artifact_sources=list(sources),
            key=key or self.key,
        )


# --- artifacts ------------------------------------------------------------------------------


class RecordingServicer(ArtifactServicer):
    """Serves what tests put in its store as it is (``put_as`` may store lies: the agent, not
    the source, must catch them)."""

    def __init__(self, store: BlobStore) -> None:
        super().__init__(store, verify=False)
        self.fetches: list[tuple[str, int]] = []
        self.chunk_size = 0
        self.delay_s = 0.0

    def Fetch(
        self, request: artifact_pb2.FetchRequest, context: grpc.ServicerContext
    ) -> Iterator[artifact_pb2.BlobChunk]:
        self.fetches.append((request.digest, request.offset))
        if self.chunk_size:
            request = artifact_pb2.FetchRequest(
                digest=request.digest, offset=request.offset, chunk_size=self.chunk_size
            )
        for chunk in super().Fetch(request, context):
            yield chunk
            if self.delay_s and not context.is_active():
                return
            time.sleep(self.delay_s)


class ArtifactServer:
    def __init__(self, root: Path) -> None:
        self.store = BlobStore(root)
        self.servicer = RecordingServicer(self.store)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        artifact_pb2_grpc.add_ArtifactServiceServicer_to_server(self.servicer, self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{port}"
        self.server.start()

    def put(self, data: bytes) -> str:
        return self.store.put(data)

    def publish(self, release: Release) -> None:
        """Serve a release's blobs: its model, and its golden data when it has some."""
        self.put(release.model)
        if release.golden is not None:
            self.put(release.golden)

    def put_as(self, digest: str, data: bytes) -> None:
        """Serve ``data`` under a digest it does not have (a corrupt or lying source)."""
        path = self.store.path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    @property
    def fetches(self) -> list[tuple[str, int]]:
        return list(self.servicer.fetches)

    def stop(self) -> None:
        self.server.stop(0).wait(5)


# --- MQTT -----------------------------------------------------------------------------------


@dataclass
class Seen:
    events: list[t.DeviceEvent] = field(default_factory=list)
    statuses: list[t.DeviceStatus] = field(default_factory=list)
    presences: list[t.Presence] = field(default_factory=list)
    telemetry: list[t.Telemetry] = field(default_factory=list)


class Watcher:
    """Subscribes to one device's topics (and its fleet's presence) on a real broker."""

    def __init__(self, broker_url: str, *, device_id: str, fleet: str = "lab") -> None:
        self.device_id, self.fleet = device_id, fleet
        self._lock = threading.Lock()
        self._seen = Seen()
        host, port = broker_url.removeprefix("mqtt://").rsplit(":", 1)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=unique_id("watch"))
        self.client.on_message = self._on_message
        self._subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.connect(host, int(port))
        self.client.subscribe(
            [(f"{topics.ROOT}/dev/{device_id}/+", 1), (topics.presence(fleet, device_id), 1)]
        )
        self.client.loop_start()
        assert self._subscribed.wait(10), "watcher could not subscribe"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        channel = topics.parse(msg.topic).channel
        if not msg.payload:
            return
        with self._lock:
            if channel == "events":
                self._seen.events.append(wire.decode_event(msg.payload))
            elif channel == "status":
                self._seen.statuses.append(wire.decode_status(msg.payload))
            elif channel == "presence":
                self._seen.presences.append(wire.decode_presence(msg.payload))
            elif channel == "telemetry":
                self._seen.telemetry.append(wire.decode_telemetry(msg.payload))

    @property
    def events(self) -> list[t.DeviceEvent]:
        with self._lock:
            return list(self._seen.events)

    @property
    def statuses(self) -> list[t.DeviceStatus]:
        with self._lock:
            return list(self._seen.statuses)

    @property
    def presences(self) -> list[t.Presence]:
        with self._lock:
            return list(self._seen.presences)

    @property
    def telemetry(self) -> list[t.Telemetry]:
        with self._lock:
            return list(self._seen.telemetry)

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]

    def wait_event(
        self, kind: str, *, generation: int | None = None, timeout: float = 20.0
    ) -> t.DeviceEvent:
        def probe() -> t.DeviceEvent | None:
            for e in self.events:
                if e.kind == kind and (generation is None or e.generation == generation):
                    return e
            return None

        return wait_for(f"event {kind} (seen: {self.kinds()})", probe, timeout=timeout)

    def wait_status(
        self, check: Callable[[t.DeviceStatus], bool], *, what: str, timeout: float = 20.0
    ) -> t.DeviceStatus:
        def probe() -> t.DeviceStatus | None:
            s = self.statuses
            return s[-1] if s and check(s[-1]) else None

        return wait_for(f"status {what} (last: {self.statuses[-1:]})", probe, timeout=timeout)

    def publish_desired(self, payload: bytes) -> None:
        info = self.client.publish(topics.desired(self.device_id), payload, qos=1, retain=True)
        info.wait_for_publish(timeout=10)

    def clear_desired(self) -> None:
        self.publish_desired(b"")


# --- Predict --------------------------------------------------------------------------------


def predict(
    endpoint: str, inputs: dict[str, np.ndarray], *, output_names: Sequence[str] = ()
) -> inference_pb2.PredictResponse:
    with grpc.insecure_channel(endpoint) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        request = inference_pb2.PredictRequest(
            inputs=[wire.array_to_pb(n, a) for n, a in inputs.items()],
            output_names=list(output_names),
        )
        return stub.Predict(request, timeout=10)


def predict_request(
    endpoint: str, request: inference_pb2.PredictRequest
) -> inference_pb2.PredictResponse:
    """``request`` as it is, over gRPC at ``endpoint`` (a host:port or ``unix:`` target)."""
    with grpc.insecure_channel(endpoint) as channel:
        reply: inference_pb2.PredictResponse = inference_pb2_grpc.InferenceServiceStub(
            channel
        ).Predict(request, timeout=10)
        return reply


def outputs(reply: inference_pb2.PredictResponse) -> dict[str, tuple[str, list[int], bytes]]:
    """A reply's tensors by name: dtype, shape and raw bytes, to compare replies bit for bit."""
    return {t.name: (t.dtype, list(t.shape), t.data) for t in reply.outputs}


def model_info(endpoint: str) -> inference_pb2.ModelInfoResponse:
    with grpc.insecure_channel(endpoint) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        return stub.ModelInfo(inference_pb2.ModelInfoRequest(), timeout=10)


def read_agent_json(data_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((data_dir / "agent.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


# --- the agent as a real process ------------------------------------------------------------


class AgentProcess:
    """``python -m edgefleet.agent run`` with its output in ``<data_dir>/../<id>.log``;
    ``insecure`` (the default here: these agents are not enrolled): ``--insecure``, plaintext
    gRPC; False: the data dir holds an enrolled identity (mTLS)."""

    def __init__(
        self,
        *,
        device_id: str,
        data_dir: Path,
        broker_url: str,
        controller: str,
        key_file: Path,
        fleet: str = "lab",
        insecure: bool = True,
    ) -> None:
        self.device_id, self.data_dir = device_id, data_dir
        self.log = data_dir.parent / f"{device_id}.log"
        self.args = [
            sys.executable, "-m", "edgefleet.agent", "run",
            "--device-id", device_id, "--fleet", fleet, "--mqtt", broker_url,
            "--controller", controller, "--data-dir", str(data_dir),
            "--trusted-key", str(key_file), "--metrics-port", "-1",
            "--telemetry-interval", "1", "--log-level", "INFO",
            *(["--insecure"] if insecure else []),
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    def launch(self, *, failpoints: str = "") -> subprocess.Popen[bytes]:
        """Start the process without waiting for it."""
        env = {**os.environ, "EDGEFLEET_LOG_JSON": "0", "EDGEFLEET_FAILPOINTS": failpoints}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT, env=env)
        return self.proc

    def start(self, *, failpoints: str = "") -> dict[str, Any]:
        """Start and wait until it wrote its ``agent.json``; return that."""
        proc = self.launch(failpoints=failpoints)

        def ready() -> dict[str, Any] | None:
            if proc.poll() is not None:
                raise AssertionError(f"agent exited with {proc.returncode}:\n{self.output()}")
            info = read_agent_json(self.data_dir)
            return info if info and info["pid"] == proc.pid else None

        return wait_for("the agent process to be ready", ready, timeout=30)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_exit(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


# --- flows ----------------------------------------------------------------------------------


def active_on(release: str) -> Callable[[t.DeviceStatus], bool]:
    return lambda s: s.phase is t.InstallPhase.ACTIVE and s.active_release == release


def offer(
    w: Watcher, signer: Signer, artifacts: ArtifactServer, release: Release, gen: int
) -> None:
    """Act as the controller: serve ``release``'s blobs and send it to the watched device."""
    artifacts.publish(release)
    w.publish_desired(signer.desired(release, device_id=w.device_id, generation=gen))


def install(
    w: Watcher,
    signer: Signer,
    artifacts: ArtifactServer,
    model: bytes,
    *,
    version: str,
    generation: int,
) -> None:
    """Act as the controller: release ``model`` to the watched device and wait until active."""
    release = signer.release(model, version=version)
    offer(w, signer, artifacts, release, generation)
    w.wait_status(active_on(release.ref), what=f"active on {release.ref}")


@contextlib.contextmanager
def serving_v1(
    proc: AgentProcess, signer: Signer, artifacts: ArtifactServer, model: bytes, *, broker_url: str
) -> Iterator[dict[str, Any]]:
    """Start ``proc``, install ``model`` on it as digits:1.0.0 (generation 1) and yield what the
    agent wrote to ``agent.json``; the process is killed at the end."""
    w = Watcher(broker_url, device_id=proc.device_id)
    try:
        info = proc.start()
        install(w, signer, artifacts, model, version="1.0.0", generation=1)
        yield info
    finally:
        w.close()
        proc.kill()
