"""The shipped systemd unit: limits and sandboxing set, it parses, no secret in argv, and the
broker password reaches a real agent the way the unit hands it over (LoadCredential plus
``EDGEFLEET_AGENT_MQTT_PASSWORD_FILE``), against a real password-protected Mosquitto."""

# ruff: noqa: F811 - the broker fixture of test_broker_acl is imported by name

from __future__ import annotations

import gc
import shutil
import subprocess
import warnings
from collections import defaultdict
from pathlib import Path

import pytest

from edgefleet.agent import config
from edgefleet.agent.daemon import Agent
from edgefleet.common import signing, topics, wire
from tests.conftest import Broker
from tests.deploy.test_broker_acl import USERS, acl_broker, client, connect, inbox  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "systemd" / "edge-agent.service"


def service() -> dict[str, list[str]]:
    """The [Service] section's settings, each with every value it is given."""
    values: dict[str, list[str]] = defaultdict(list)
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            values[key].append(value)
    return dict(values)


def test_the_unit_limits_and_sandboxes_the_agent() -> None:
    s = service()
    for key, value in {
        "UMask": "0077",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ReadWritePaths": "/var/lib/edgefleet",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "CapabilityBoundingSet": "",
    }.items():
        assert s.get(key) == [value], key
    assert s["MemoryMax"] and s["TasksMax"][0].isdigit()
    assert s["StateDirectory"] == ["edgefleet"]  # /var/lib/edgefleet, the data dir


def test_no_secret_is_on_the_command_line() -> None:
    s = service()
    [exec_start] = s["ExecStart"]
    assert "mqtt" not in exec_start and "password" not in exec_start
    [credential] = s["LoadCredential"]
    assert credential.startswith("mqtt-password:/etc/edgefleet/")
    assert "EDGEFLEET_AGENT_MQTT_PASSWORD_FILE=%d/mqtt-password" in s["Environment"]


def test_production_runs_mtls() -> None:
    """The unit never asks for plaintext: the device is enrolled (edge-agent enroll) first."""
    [exec_start] = service()["ExecStart"]
    assert "--insecure" not in exec_start
    config_file = ROOT / "deploy" / "agent.example.toml"
    assert "insecure" not in config_file.read_text()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_systemd_accepts_every_setting(tmp_path: Path) -> None:
    # the real ExecStart names a path that exists on a device only
    unit = tmp_path / UNIT.name
    unit.write_text(
        "\n".join(
            "ExecStart=/bin/true" if line.startswith("ExecStart=") else line
            for line in UNIT.read_text().splitlines()
        )
    )
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    problems = [line for line in done.stderr.splitlines() if str(unit) in line]
    assert done.returncode == 0 and not problems, done.stderr


def test_the_agent_takes_its_password_from_the_credential(
    acl_broker: Broker, tmp_path: Path
) -> None:
    # what systemd does for the unit: the credential in a directory of its own, %d pointing
    # at it, the config naming only the user
    credentials = tmp_path / "credentials"
    credentials.mkdir(mode=0o700)
    name = service()["LoadCredential"][0].partition(":")[0]
    (credentials / name).write_text(USERS["dev-a"] + "\n")
    env = {}
    for assignment in service()["Environment"]:
        key, _, value = assignment.partition("=")
        env[key] = value.replace("%d", str(credentials))
    key_file = tmp_path / "trusted.pem"
    key_file.write_text(signing.public_pem(signing.generate().public_key()))
    conf = tmp_path / "agent.toml"
    conf.write_text(
        f'device_id = "dev-a"\nfleet = "f"\nmqtt = "mqtt://dev-a@127.0.0.1:{acl_broker.port}"\n'
        f'data_dir = "{tmp_path / "data"}"\ntrusted_keys = ["{key_file}"]\nmetrics_port = -1\n'
    )
    settings = config.load(file=conf, env=env, flags={})
    ctl = client(acl_broker, "edgefleet-controller")
    got = inbox(ctl)
    connect(ctl, acl_broker)
    ctl.subscribe(topics.status("dev-a"), qos=1)
    agent = Agent(settings)
    try:
        agent.start()
        topic, payload = got.get(timeout=15)
    finally:
        agent.stop()
        ctl.disconnect()
        ctl.loop_stop()
        del agent
        with warnings.catch_warnings():
            # paho's loop_stop leaves its wake-up socket pair to the client's __del__, which a
            # cycle collection may run after the sockets' own: not this test's concern
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()

    assert "a-secret" not in settings.mqtt.url
    assert topic == topics.status("dev-a")
    assert wire.decode_status(payload).device_id == "dev-a"
