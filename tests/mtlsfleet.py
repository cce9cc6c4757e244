"""Real fleet processes on mTLS, as ``edgectl demo`` starts them (``demo.fleet.start_fleet``).

``start_mtls`` makes the run's certificates (``edge-controller broker-config``), starts an mTLS
Mosquitto of the caller's own on them and ``edge-controller run`` with ``--tls`` (the devices'
port mTLS, enrollment on its TLS listener, the operator API on TLS); ``start_enrolled`` enrolls
each device for real (a token file, ``edge-agent enroll``), has Mosquitto reread its ACL and
starts the agents without ``--insecure``. Every hop is mTLS; nothing here is plaintext but an
agent's local Predict on loopback, as in production.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgefleet.demo.processes import Processes
from edgefleet.demo.stack import (
    Agent,
    AgentSpec,
    Broker,
    Controller,
    Mtls,
    enroll_agents,
    start_agents,
    start_controller,
    start_mtls_broker,
)
from tests.conftest import mosquitto_available


@dataclass(frozen=True)
class MtlsStack:
    broker: Broker  # an mTLS Mosquitto of this stack's own (``mqtts://``)
    controller: Controller
    workdir: Path

    @property
    def mtls(self) -> Mtls:
        assert self.broker.mtls is not None
        return self.broker.mtls


def start_mtls(procs: Processes, workdir: Path, *, extra_args: Sequence[str] = ()) -> MtlsStack:
    """The run's certificates, an mTLS Mosquitto on them and an mTLS controller (its data dir
    ``workdir/controller``); skips where Mosquitto is not installed."""
    if not mosquitto_available():
        pytest.skip("mosquitto is not installed (apt-get install mosquitto; .ci/run does)")
    data_dir = workdir / "controller"
    broker = start_mtls_broker(procs, workdir, controller_dir=data_dir)
    controller = start_controller(
        procs, data_dir, mqtt_url=broker.url, mtls=broker.mtls, extra_args=extra_args
    )
    return MtlsStack(broker, controller, workdir)


def start_enrolled(
    procs: Processes,
    stack: MtlsStack,
    specs: Sequence[AgentSpec],
    *,
    trusted_key: Path,
    telemetry_interval_s: float | None = None,
) -> list[Agent]:
    """Enroll each device with ``stack``'s controller, let the broker reread its ACL, then
    start the agents on their identities: mTLS to the broker, the controller and peers."""
    enroll_agents(
        specs, workdir=stack.workdir, controller=stack.controller, ca_file=stack.mtls.ca_file
    )
    stack.broker.reload_acl()
    return start_agents(
        procs,
        specs,
        workdir=stack.workdir,
        mqtt_url=stack.broker.url,
        controller=stack.controller.address,
        trusted_key=trusted_key,
        telemetry_interval_s=telemetry_interval_s,
        insecure=False,
    )
