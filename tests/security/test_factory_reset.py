"""Attack: replaying a recorded desired state to a device after its factory reset.

Against real parts: a real controller in this process (real gRPC, SQLite, rollouts), a real
``edge-agent run`` process enrolled for real, the session's real Mosquitto, and an attacker on
the broker who recorded every signed desired state the device was sent. A factory reset wipes
the device (its data dir, its key, its generations) and the operator removes it and enrolls it
again. A desired state is signed and names the device, so a recorded one still verifies until
it expires; what makes it stale is its generation. Before, a device removed and enrolled again
started over at generation 1, so a recorded desired state of a higher generation, naming a
release the operator had since replaced, installed on the fresh device as the newest.
Now the controller keeps the generations it issued across ``remove`` and enrollment, so every
desired state after the reset outnumbers everything recorded before it, and the agent refuses
each replay as stale and keeps the release it was sent last.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.common import desired, topics
from edgefleet.demo import digits
from edgefleet.edgectl.keys import trusted_pem
from edgefleet.v1 import controller_pb2 as pb
from tests.agent.helpers import AgentProcess, Watcher, model_info, read_agent_json, wait_for
from tests.conftest import Broker
from tests.controller import support
from tests.security.test_enrollment import agent_enroll, token_for
from tests.security.test_trust_bundle import DEADLINE, _all_active, edgectl


class Recorder:
    """The attacker: a client on the broker keeping every desired state sent to one device."""

    def __init__(self, broker: Broker, device_id: str) -> None:
        self.topic = topics.desired(device_id)
        self._lock = threading.Lock()
        self._seen: list[bytes] = []
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=support.unique("rec"))
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.connect("127.0.0.1", broker.port)
        self.client.subscribe(self.topic, qos=1)
        self.client.loop_start()
        assert subscribed.wait(10), "the recorder could not subscribe"

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        if msg.payload:
            with self._lock:
                self._seen.append(bytes(msg.payload))

    @property
    def payloads(self) -> list[bytes]:
        with self._lock:
            return list(dict.fromkeys(self._seen))  # retained redeliveries once

    def replay(self, payload: bytes) -> None:
        self.client.publish(self.topic, payload, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def ctl(tmp_path: Path, broker: Broker) -> Iterator[support.Running]:
    running = support.start(support.settings(tmp_path / "ctl", broker.url))
    yield running
    running.stop()


def serving(p: AgentProcess) -> str:
    info = read_agent_json(p.data_dir)
    assert info is not None
    return model_info(info["predict_endpoint"]).release


@pytest.mark.slow
def test_a_replay_after_a_factory_reset_is_stale(
    ctl: support.Running, broker: Broker, tmp_path: Path, digits_model: digits.TrainedModel
) -> None:
    fleet = support.unique("fleet")
    device, name = f"{fleet}-cam", support.unique("digits")
    ctl.stub.InitKey(pb.InitKeyRequest(), timeout=DEADLINE)
    keys = list(ctl.stub.ListKeys(pb.ListKeysRequest()).keys)
    key_file = tmp_path / "trusted.pem"
    key_file.write_text(trusted_pem(keys))
    trust = support.trust(ctl.stub)
    support.upload(ctl.stub, name, digits_model.onnx_bytes)
    r1, r2, r3 = (f"{name}:{v}" for v in ("1.0.0", "1.1.0", "1.2.0"))
    for release in (r1, r2, r3):
        version = release.rpartition(":")[2]
        ctl.stub.CreateRelease(pb.CreateReleaseRequest(name=name, version=version), timeout=60)
    data = tmp_path / "device"
    assert agent_enroll(ctl, token_for(ctl, device, fleet=fleet), data).exit_code == 0
    agent = AgentProcess(
        device_id=device,
        data_dir=data,
        broker_url=broker.url,
        controller=ctl.address,
        key_file=key_file,
        fleet=fleet,  # insecure (the default here): this controller is plaintext
    )
    attacker = Recorder(broker, device)
    watcher = Watcher(broker.url, device_id=device, fleet=fleet)

    def generation(payload: bytes) -> int:
        return desired.open_desired(payload, trust, device_id=device).generation

    try:
        agent.start()
        support.eventually(
            lambda: len(ctl.stub.ListDevices(pb.ListDevicesRequest(fleet=fleet)).devices) == 1,
            what=f"{device} registered",
        )
        for release in (r1, r2):
            ctl.stub.Deploy(pb.DeployRequest(release=release, fleet=fleet), timeout=DEADLINE)
            _all_active(ctl, fleet, release, 1)
        wait_for("both desired states recorded", lambda: len(attacker.payloads) >= 2 or None)
        recorded = attacker.payloads
        before = max(generation(p) for p in recorded)

        # The factory reset: the device is wiped, removed and enrolled again, from scratch.
        assert agent.terminate() == 0
        shutil.rmtree(data)
        removed = edgectl(ctl, "device", "remove", device)
        assert removed.exit_code == 0, removed.output
        assert agent_enroll(ctl, token_for(ctl, device, fleet=fleet), data).exit_code == 0
        agent.start()
        support.eventually(
            lambda: len(ctl.stub.ListDevices(pb.ListDevicesRequest(fleet=fleet)).devices) == 1,
            what=f"{device} registered again",
        )
        ctl.stub.Deploy(pb.DeployRequest(release=r3, fleet=fleet), timeout=DEADLINE)
        _all_active(ctl, fleet, r3, 1)
        after = wait_for(
            "the desired state of r3 recorded",
            lambda: [g for g in map(generation, attacker.payloads) if g > before] or None,
        )
        assert min(after) > before  # no generation issued after the reset goes back

        for payload in recorded:  # the attacker replays what it recorded before the reset
            attacker.replay(payload)
        for payload in recorded:
            stale = watcher.wait_event("desired_rejected", generation=generation(payload))
            assert "stale" in stale.message
        assert serving(agent) == r3
        statuses = [s for s in watcher.statuses if s.active_release]
        assert statuses and statuses[-1].active_release == r3
    finally:
        agent.kill()
        attacker.close()
        watcher.close()
