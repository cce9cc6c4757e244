"""The shipped NATS node config (deploy/nats/nats-node.conf) is one ``nats-server`` accepts,
and has what EdgeFleet's MQTT use needs on a cluster (README: Brokers)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.brokers.nats import nats_binary

CONF = Path(__file__).resolve().parents[2] / "deploy" / "nats" / "nats-node.conf"


def test_the_shipped_node_config_is_valid_and_replicates_mqtt_state(tmp_path: Path) -> None:
    text = CONF.read_text()
    for needed in (r"^server_name: \S+", r"^jetstream \{", r"stream_replicas: 3", r"^cluster \{"):
        assert re.search(needed, text, re.MULTILINE), needed
    assert re.search(r"^max_payload: [0-9]+MB", text, re.MULTILINE)
    binary = nats_binary()
    if binary is None:
        pytest.skip("nats-server is not installed (apt-get install nats-server)")
    result = subprocess.run(
        [binary, "-c", str(CONF), "-t"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
