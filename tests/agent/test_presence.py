"""An agent that hears the broker call it offline while it is connected says online again.

What a clustered broker can do after losing a node: deliver the last will of one of the
device's dead connections after the "online" of its new one (or lose that one). Played here on
a real Mosquitto by publishing such a will, as the broker would, while a real agent process
runs.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from edgefleet.common import topics, wire
from edgefleet.common import types as t
from edgefleet.common.mqttclient import MqttSession
from tests.agent.helpers import AgentProcess, ArtifactServer, Signer, Watcher, unique_id, wait_for
from tests.conftest import Broker


def publish(broker: Broker, topic: str, payload: bytes) -> None:
    session = MqttSession(broker.url, client_id=f"late-will-{uuid.uuid4().hex[:8]}")
    session.start()
    try:
        assert session.wait_connected(10)
        session.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
    finally:
        session.stop()


def test_a_late_last_will_is_answered_with_online(
    broker: Broker, tmp_path: Path, signer: Signer, artifacts: ArtifactServer
) -> None:
    device_id = unique_id()
    agent = AgentProcess(
        device_id=device_id,
        data_dir=tmp_path / device_id,
        broker_url=broker.url,
        controller=artifacts.address,
        key_file=signer.key_file,
    )
    w = Watcher(broker.url, device_id=device_id)
    try:
        agent.start()
        # The agent says online on connecting and once more a refresh later (no release
        # changes here, so nothing else says it): once the second is seen, the will is last.
        wait_for("the refresh after connecting", lambda: sum(p.online for p in w.presences) >= 2)
        will = t.Presence(device_id=device_id, fleet="lab", online=False, at_ms=1)
        publish(
            broker, topics.presence("lab", device_id), wire.presence_to_pb(will).SerializeToString()
        )

        def online_again() -> bool:
            seen = w.presences
            late = max(
                (i for i, p in enumerate(seen) if not p.online and p.at_ms == 1), default=None
            )
            if late is None:
                return False  # the watcher has not had the will yet
            return any(p.online for p in seen[late + 1 :])

        wait_for("the agent to say online again", online_again, timeout=30)
    finally:
        agent.kill()
        w.close()
