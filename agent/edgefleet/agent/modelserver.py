"""The model server of a container release: ``python -m edgefleet.agent.modelserver``.

It is what runs inside ``edgefleet/runtime`` images (deploy/docker/runtime.Dockerfile): one
model file, given by path, served over the very contract the agent serves, by the agent's own
code: ``InferenceService`` Predict and ModelInfo (``serving.InferenceServicer`` over a
``Predictor`` holding one ``runtime.ModelRuntime``) and ``grpc.health.v1``, SERVING once the
model is loaded. The agent's ``containers`` runtime starts it, health-checks it through Predict
and forwards its own Predict to it; a user's own image (``edgectl release create --image``)
must answer the same calls on port 50051.

The model's own signature is the manifest here: the agent checks it against the signed one
through ModelInfo before anything is switched to the container. Input errors leave as
INVALID_ARGUMENT, inference failures as INTERNAL, exactly as from the agent.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time
from pathlib import Path

import onnxruntime as ort

from edgefleet.agent.metrics import AgentMetrics
from edgefleet.agent.predictor import Predictor
from edgefleet.agent.runtime import LoadedModel, ModelRuntime, spec_of
from edgefleet.agent.serving import InferenceServer, InferenceServicer
from edgefleet.common import externaldata
from edgefleet.common import types as t
from edgefleet.common.errors import EdgeFleetError, InvalidInputError, ModelLoadError

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "0.0.0.0:50051"  # inside its container, behind a port published on loopback


def load(path: Path, *, release: str, threads: int = 0) -> ModelRuntime:
    """``path`` in ONNX Runtime (CPU), with a manifest made of the model's own signature."""
    try:
        externaldata.refuse_external(path)
    except InvalidInputError as exc:
        raise ModelLoadError(f"refusing {path}: {exc}") from exc
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    started = time.perf_counter()
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own classes, all plain Exceptions
        raise ModelLoadError(f"ONNX Runtime cannot load {path}: {exc}") from exc
    name, _, version = release.partition(":")
    manifest = t.Manifest(
        name=name or "model",
        version=version or "0.0.0",
        model_digest="",
        model_size=path.stat().st_size,
        inputs=tuple(spec_of(a) for a in session.get_inputs()),
        outputs=tuple(spec_of(a) for a in session.get_outputs()),
    )
    model = LoadedModel(release=release, slot="container", manifest=manifest, manifest_digest="")
    return ModelRuntime(session, model, load_seconds=time.perf_counter() - started)


def serve(path: Path, *, listen: str, release: str, threads: int, stop: threading.Event) -> None:
    """Load ``path``, serve it on ``listen`` until ``stop`` is set."""
    runtime = load(path, release=release, threads=threads)
    servicer = InferenceServicer(
        Predictor(runtime), device_id="container", fleet="", metrics=AgentMetrics()
    )
    server = InferenceServer(servicer, listen=listen)
    endpoint = server.start()
    server.set_serving(True)
    log.info(
        "serving %s (%s) on %s, loaded in %.3fs", release, path, endpoint, runtime.load_seconds
    )
    stop.wait()
    server.stop(grace=1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edgefleet.agent.modelserver",
        description="Serve one ONNX model over EdgeFleet's InferenceService (Predict, "
        "ModelInfo) and grpc.health.v1: the model server of a container release.",
    )
    parser.add_argument("--model", type=Path, required=True, help="the .onnx file to serve")
    parser.add_argument("--listen", default=DEFAULT_LISTEN, help="host:port (default %(default)s)")
    parser.add_argument(
        "--release", default="", help="NAME:VERSION it reports (default: $EDGEFLEET_RELEASE)"
    )
    parser.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: auto)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    release = args.release or os.environ.get("EDGEFLEET_RELEASE", "")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve(args.model, listen=args.listen, release=release, threads=args.threads, stop=stop)
    except EdgeFleetError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
