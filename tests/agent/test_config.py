"""Settings: file, then environment, then flags; clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.agent import config
from edgefleet.common.errors import InvalidInputError
from tests.agent.clirun import invoke


@pytest.fixture
def key(tmp_path: Path) -> Path:
    (tmp_path / "keys").mkdir()
    path = tmp_path / "keys" / "trusted.pem"
    path.write_text("not read until the agent starts")
    return path


def test_file_then_env_then_flags(tmp_path: Path, key: Path) -> None:
    conf = tmp_path / "agent.toml"
    conf.write_text(
        'device_id = "from-file"\n'
        'fleet = "factory-a"\n'
        'mqtt = "mqtt://user:secret@broker:1883"\n'
        'data_dir = "state"\n'
        'trusted_keys = ["keys/trusted.pem"]\n'
        "metrics_port = 9464\n"
        "telemetry_interval = 5\n"
        '[labels]\nsite = "plant-1"\ncamera = "line-3"\n'
    )
    s = config.load(
        file=conf,
        env={"EDGEFLEET_AGENT_FLEET": "from-env", "EDGEFLEET_AGENT_METRICS_PORT": "-1"},
        flags={"device_id": "from-flag", "labels": ["camera=line-4"], "predict_listen": "[::]:0"},
    )
    assert s.device.device_id == "from-flag"
    assert s.device.fleet == "from-env"
    assert dict(s.device.labels) == {"site": "plant-1", "camera": "line-4"}
    assert s.data_dir == tmp_path / "state"  # relative to the file
    assert s.trusted_keys == (key,)
    assert s.serving.metrics_port == -1
    assert s.serving.predict_listen == "[::]:0"
    assert s.telemetry_interval == 5.0
    assert s.mqtt.url == "mqtt://user:secret@broker:1883"


def test_the_shipped_example_config_parses() -> None:
    example = Path(__file__).resolve().parents[2] / "deploy" / "agent.example.toml"
    if not example.exists():
        pytest.skip("no deploy/agent.example.toml in this tree")
    values = config.from_file(example)
    assert values["device_id"] and values["trusted_keys"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"trusted_keys": ()}, "refusing to start without a trusted key"),
        ({"device_id": "Bad/Id"}, "invalid device name"),
        ({"mqtt": "http://broker"}, "mqtt://"),
        ({"predict_listen": "no-port"}, "HOST:PORT"),
        ({"metrics_port": -2}, "-1..65535"),
        ({"labels": ["novalue"]}, "KEY=VALUE"),
        ({"telemetry_interval": 0}, "positive"),
        ({"log_level": "chatty"}, "unknown log level"),
    ],
)
def test_refusals_say_what_to_fix(key: Path, flags: dict[str, object], message: str) -> None:
    base: dict[str, object] = {"device_id": "dev-1", "trusted_keys": [key]}
    with pytest.raises(InvalidInputError, match=message):
        config.load(file=None, env={}, flags={**base, **flags})


def test_unknown_key_in_the_file(tmp_path: Path) -> None:
    conf = tmp_path / "agent.toml"
    conf.write_text('device_id = "a"\npredict_port = 1\n')
    with pytest.raises(InvalidInputError, match="unknown setting 'predict_port'"):
        config.from_file(conf)


def test_cli_refuses_to_start_without_a_trusted_key(tmp_path: Path) -> None:
    result = invoke(["run", "--device-id", "dev-1", "--data-dir", str(tmp_path / "d")])
    assert result.exit_code == 2
    assert "refusing to start without a trusted key" in result.output
    assert not (tmp_path / "d").exists()


def test_power_root_defaults_to_the_real_root_and_is_relative_to_the_file(
    tmp_path: Path, key: Path
) -> None:
    base = {"device_id": "dev-1", "trusted_keys": [key]}
    assert config.load(file=None, env={}, flags=base).power_root == Path("/")
    conf = tmp_path / "agent.toml"
    conf.write_text('power_root = "fixture"\n')
    s = config.load(file=conf, env={}, flags=base)
    assert s.power_root == tmp_path / "fixture"
    s = config.load(file=conf, env={"EDGEFLEET_AGENT_POWER_ROOT": "/srv/sys"}, flags=base)
    assert s.power_root == Path("/srv/sys")


def test_the_password_file_goes_into_every_node_of_a_cluster(tmp_path: Path) -> None:
    secret = tmp_path / "mqtt-password"
    secret.write_text("p@ss\n")
    s = config.MqttSettings(url="mqtt://dev@a:1883, mqtt://dev@b:1884", password_file=secret)
    config._check_password_file(s)
    assert config.broker_url(s) == "mqtt://dev:p%40ss@a:1883,mqtt://dev:p%40ss@b:1884"
    with pytest.raises(InvalidInputError, match="needs a user"):
        config._check_password_file(
            config.MqttSettings(url="mqtt://dev@a,mqtt://b", password_file=secret)
        )


def test_cli_refuses_an_unenrolled_agent_without_insecure(tmp_path: Path, key: Path) -> None:
    """mTLS is the default: no identity in the data dir and no --insecure, no start (exit 2,
    saying what to do: enroll, or --insecure for plaintext)."""
    data = tmp_path / "d"
    args = ["run", "--device-id", "dev-1", "--fleet", "f", "--data-dir", str(data),
            "--trusted-key", str(key), "--mqtt", "mqtt://127.0.0.1:1"]  # fmt: skip
    result = invoke(args)
    assert result.exit_code == 2
    assert "not enrolled" in result.stderr and "edge-agent enroll" in result.stderr
    assert "--insecure" in result.stderr
    assert not (data / "agent.json").exists()
