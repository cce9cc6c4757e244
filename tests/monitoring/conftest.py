"""Real processes for ``test_prometheus_live``: a controller and one agent serving a release.

``monitoring_targets`` starts ``edge-controller`` (with ``--metrics-port``) and one enrolled
``edge-agent`` (metrics on, telemetry every second), every hop mTLS on an mTLS broker of their
own (``tests.mtlsfleet``, as ``edgectl demo`` starts them), deploys a real
signed release of the digits model through the controller's gRPC API as a canary that bakes
past the test (so a rollout is in progress), waits until the device is active, keeps Predict
traffic going through the agent's gRPC API while the test runs (one request in fifty with a
wrong input, so error ratios have data), and waits for the device's telemetry to reach the
controller. Only power (no sensor here), aborted rollouts (nothing aborts) and the container
families (the release runs in-process) may be absent.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from edgefleet.agent.identity import IdentityFiles
from edgefleet.common import rpc, topics
from edgefleet.common.errors import EdgeFleetError
from edgefleet.common.mqttclient import MqttSession
from edgefleet.demo import digits
from edgefleet.demo.errors import StartError
from edgefleet.demo.processes import Processes, free_port
from edgefleet.demo.stack import Agent, AgentSpec, enroll_agents
from edgefleet.edgectl.client import authorized
from edgefleet.edgectl.inference import InferenceClient
from edgefleet.v1 import controller_pb2 as pb
from edgefleet.v1 import controller_pb2_grpc as pb_grpc
from tests.monitoring.catalogue import CONTAINERS, POWER
from tests.monitoring.harness import MonitoringTargets, ScrapeTarget
from tests.mtlsfleet import MtlsStack, start_enrolled, start_mtls

RELEASE = "digits:1.0.0"
PAUSE_S = 0.01
BAD_EVERY = 50
READY_TIMEOUT_S = 30.0

MAY_BE_ABSENT = POWER | CONTAINERS | {"edgefleet_rollouts_aborted_total"}
"""No power sensor on this machine; no rollout is aborted; the release runs in-process."""


def wait_until(what: str, done: Callable[[], bool], *, timeout: float, logs: Processes) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.name}\n{p.tail(20)}" for p in logs.started)
            pytest.fail(f"{what} within {timeout:g}s\n{tails}")
        time.sleep(0.2)


class Traffic:
    """An app calling the agent's Predict until stopped: mostly good requests, one in
    ``BAD_EVERY`` with a wrong input (an error by reason), so every telemetry window and so
    every rate and error ratio has data while Prometheus scrapes."""

    def __init__(self, agent: Agent) -> None:
        self._endpoint = agent.predict_endpoint
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="monitoring-traffic", daemon=True)
        self.sent = 0

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        good = digits.load_data().x_test[:1].astype(np.float32)
        bad = np.zeros((1, 3), np.float32)
        with InferenceClient(self._endpoint, name="monitoring traffic") as client:
            while not self._stop.wait(PAUSE_S):
                try:
                    if self.sent % BAD_EVERY == BAD_EVERY - 1:
                        with contextlib.suppress(EdgeFleetError):
                            client.predict({"pixels": bad})
                    else:
                        client.predict({"pixels": good})
                except EdgeFleetError:
                    pass  # the agent is stopping; the fixture is ending
                self.sent += 1


def deploy_canary(
    address: str, release: str, fleet: str, *, token: str, api_ca: bytes | None
) -> None:
    """Deploy as a canary that bakes far longer than the test: the rollout stays in its
    canary step, so the rollout panels and rules see a rollout in progress."""
    strategy = pb.RolloutStrategy(
        strategy_kind=pb.STRATEGY_KIND_CANARY,
        canary="1",
        waves="100%",
        bake="1h",
        max_error_rate=0.5,  # the wrong inputs we send on purpose must not abort it
    )
    tls = rpc.ClientTls(api_ca) if api_ca is not None else None
    with authorized(rpc.channel(address, tls=tls), token) as channel:
        stub = pb_grpc.ControllerServiceStub(channel)
        stub.Deploy(
            pb.DeployRequest(release=release, fleet=fleet, strategy=strategy),
            timeout=rpc.DEFAULT_DEADLINE_S,
        )


def garble(stack: MtlsStack, device_id: str) -> None:
    """One report that does not decode, as a broken device would send (an enrolled one, on its
    own telemetry topic: the broker's ACL allows no other): the controller counts it in
    ``edgefleet_controller_malformed_messages_total`` (a series only once it happened)."""
    files = IdentityFiles.in_data_dir(stack.workdir / "agents" / device_id)
    session = MqttSession(
        stack.broker.url,
        client_id=device_id,
        ca_file=str(files.ca),
        cert_file=str(files.cert),
        key_file=str(files.key),
    )
    session.start()
    try:
        assert session.wait_connected(10)
        session.publish(topics.telemetry(device_id), b"\xff not protobuf").wait_for_publish(5)
    finally:
        session.stop()


@pytest.fixture(scope="module")
def monitoring_targets(
    tmp_path_factory: pytest.TempPathFactory, digits_model: digits.TrainedModel
) -> Iterator[MonitoringTargets]:
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus is not installed (apt-get install prometheus; setup.sh --dev does)")
    workdir = tmp_path_factory.mktemp("monitoring")
    tag = uuid.uuid4().hex[:6]
    fleet, device_id = f"mon-{tag}", f"mon-{tag}-1"
    garbler = f"mon-{tag}-broken"  # of a fleet of its own: no rollout of ours targets it
    metrics_port = free_port()
    with Processes(workdir / "logs") as procs, contextlib.ExitStack() as stack:
        try:
            # the last --metrics-port wins: ours, so we know where to scrape
            mtls = start_mtls(procs, workdir, extra_args=["--metrics-port", str(metrics_port)])
            controller = mtls.controller
            token = controller.admin_token()
            with controller.client() as client:
                trusted = workdir / "trusted.pem"
                trusted.write_text(client.init_key().public_key_pem)
                # a device enrolled but never run, to send the broken report as itself
                enroll_agents(
                    [AgentSpec(garbler, f"{fleet}-broken")],
                    workdir=workdir,
                    controller=controller,
                    ca_file=mtls.mtls.ca_file,
                )
                [agent] = start_enrolled(
                    procs,
                    mtls,
                    [AgentSpec(device_id, fleet)],
                    trusted_key=trusted,
                    telemetry_interval_s=1.0,
                )
                wait_until(
                    "the device never registered",
                    lambda: bool(client.list_devices(fleet)),
                    timeout=READY_TIMEOUT_S,
                    logs=procs,
                )
                model = digits_model.onnx_bytes
                client.upload_model(iter([model]), name="digits", size=len(model))
                client.create_release("digits", "1.0.0")
                api_ca = controller.api_ca.read_bytes() if controller.api_ca else None
                deploy_canary(controller.api, RELEASE, fleet, token=token, api_ca=api_ca)

                def active() -> bool:
                    [d] = client.list_devices(fleet)
                    return d.active_release == RELEASE

                wait_until("the release never became active", active, timeout=60, logs=procs)
                garble(mtls, garbler)
                stack.enter_context(Traffic(agent))

                def telemetry_arrived() -> bool:
                    [d] = client.list_devices(fleet)
                    return d.HasField("telemetry") and d.telemetry.errors > 0

                wait_until(
                    "no telemetry with requests reached the controller",
                    telemetry_arrived,
                    timeout=READY_TIMEOUT_S,
                    logs=procs,
                )
        except StartError as exc:
            pytest.fail(f"{exc}; the end of its log:\n{exc.log_tail}")
        yield MonitoringTargets(
            controller=(ScrapeTarget(f"127.0.0.1:{metrics_port}"),),
            agents=(
                ScrapeTarget(
                    f"127.0.0.1:{agent.metrics_port}", {"device": device_id, "fleet": fleet}
                ),
            ),
            variables={"device": device_id, "fleet": fleet, "release": RELEASE},
            may_be_absent=frozenset(MAY_BE_ABSENT),
        )
