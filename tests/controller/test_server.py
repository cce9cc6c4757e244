"""The server around the API: ArtifactService over the registry's blobs, health, metrics, CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgefleet.common import rpc
from edgefleet.controller.config import MetricsSettings
from edgefleet.demo.digits import TrainedModel
from edgefleet.v1 import artifact_pb2, artifact_pb2_grpc
from tests.conftest import Broker, free_port
from tests.controller import support


def test_artifact_fetch_from_an_offset_returns_the_tail(
    ctl: support.Running, digits_model: TrainedModel
) -> None:
    model = support.upload(ctl.stub, "digits", digits_model.onnx_bytes)
    with rpc.channel(ctl.address) as channel:  # where devices reach it, no operator token
        artifacts = artifact_pb2_grpc.ArtifactServiceStub(channel)
        info = artifacts.Stat(artifact_pb2.StatRequest(digest=model.digest), timeout=5)
        chunks = list(
            artifacts.Fetch(
                artifact_pb2.FetchRequest(digest=model.digest, offset=1000, chunk_size=512),
                timeout=5,
            )
        )

    assert info.size == len(digits_model.onnx_bytes)
    assert chunks[0].offset == 1000
    assert all(c.total_size == info.size for c in chunks)
    assert b"".join(c.data for c in chunks) == digits_model.onnx_bytes[1000:]


def test_health_says_serving(ctl: support.Running) -> None:
    api = health_pb2_grpc.HealthStub(ctl.channel)
    for service in ("", "edgefleet.v1.ControllerService"):
        answer = api.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    with rpc.channel(ctl.address) as channel:  # devices' port: health without a token
        devices = health_pb2_grpc.HealthStub(channel)
        for service in ("", "edgefleet.v1.ArtifactService"):
            answer = devices.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_metrics_endpoint_counts_devices_by_fleet(tmp_path: Path, broker: Broker) -> None:
    port = free_port()
    settings = replace(support.settings(tmp_path, broker.url), metrics=MetricsSettings(port=port))
    ctl = support.start(settings)
    device = support.Device(broker.url)
    try:
        fleet = support.unique("fleet")
        device.status(support.unique("dev"), fleet)
        line = f'edgefleet_controller_devices{{fleet="{fleet}",online="false"}} 1.0'

        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                return str(r.read().decode())

        support.eventually(lambda: line in scrape(), what="the device gauge")
    finally:
        device.close()
        ctl.stop()


def test_cli_runs_writes_its_state_file_and_stops_on_sigterm(
    tmp_path: Path, broker: Broker
) -> None:
    data = tmp_path / "data"
    port, api = free_port(), free_port()
    env = {**os.environ, "EDGEFLEET_LOG_JSON": "0"}
    cmd = [
        sys.executable,
        "-m",
        "edgefleet.controller",
        "run",
        "--data-dir",
        str(data),
        "--grpc",
        f"127.0.0.1:{port}",
        "--api",
        f"127.0.0.1:{api}",
        "--mqtt",
        broker.url,
        "--mqtt-client-id",
        support.unique("cli"),
        "--insecure",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        state_file = data / "controller.json"
        deadline = time.monotonic() + 30
        while not state_file.exists():
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "no controller.json"
            time.sleep(0.05)
        state = json.loads(state_file.read_text())
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert state == {"grpc": f"127.0.0.1:{port}", "api": f"127.0.0.1:{api}", "pid": proc.pid}
    assert proc.returncode == 0, output.decode()
    ready = f"controller ready: devices on 127.0.0.1:{port}, operator API on 127.0.0.1:{api}"
    assert ready in output.decode()
    assert (data / "controller.db").exists()
    token_file = data / "admin.token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert str(token_file) in output.decode()
    assert token_file.read_text().strip() not in output.decode()
    assert not state_file.exists()
