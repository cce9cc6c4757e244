"""No secret needs the controller's command line: a real ``edge-controller run`` logs in to a
real password-only Mosquitto with the password from ``--mqtt-password-file``, from the
environment (``EDGEFLEET_CONTROLLER_MQTT``) or from a ``--config`` TOML file, and its
``/proc/PID/cmdline`` holds no password. The database password's file is checked on the URL it
makes (no PostgreSQL here); the layering (flag over environment over file) on ``run``'s own
check of ``--log-level``, which refuses before anything starts."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from edgefleet.common.errors import InvalidInputError
from edgefleet.controller.cli import app
from edgefleet.controller.config import with_db_password_file
from edgefleet.demo.processes import Processes, child_env, free_port, script, wait_for_json
from edgefleet.demo.stack import start_controller
from tests.conftest import Broker, mosquitto_available

USER = "ctl"
TIMEOUT = 60.0
WIDE = "500"  # columns for typer's error box: no message wrapped


@pytest.fixture
def password_broker(tmp_path: Path) -> Iterator[tuple[Broker, str]]:
    """A Mosquitto that lets in only USER with its password (no anonymous clients)."""
    if not mosquitto_available() or shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto and mosquitto_passwd are needed (apt-get install mosquitto)")
    password = f"pw-{uuid.uuid4().hex}"
    passwd = tmp_path / "passwd"
    passwd.touch(mode=0o600)
    subprocess.run(["mosquitto_passwd", "-b", str(passwd), USER, password], check=True)
    b = Broker(tmp_path)
    base = [x for x in b.conf.read_text().splitlines() if not x.startswith("allow_anonymous")]
    b.conf.write_text("\n".join([*base, "allow_anonymous false", f"password_file {passwd}", ""]))
    b.start()
    yield b, password
    b.kill()


def logged_in(broker: Broker, client_id: str) -> bool:
    """Mosquitto logged ``client_id`` connected as USER (it refuses a wrong or no password)."""
    return any(
        f" as {client_id} " in line and f"u'{USER}'" in line
        for line in broker.log.read_text(errors="replace").splitlines()
        if "New client connected" in line
    )


@pytest.mark.parametrize("source", ["password-file", "environment", "config-file"])
def test_the_controller_logs_in_to_the_broker_with_no_secret_in_argv(
    password_broker: tuple[Broker, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    source: str,
) -> None:
    broker, password = password_broker
    client_id = f"ctl-{uuid.uuid4().hex[:8]}"
    data_dir = tmp_path / "data"
    with Processes(tmp_path / "logs") as procs:
        if source == "password-file":
            secret = tmp_path / "mqtt.password"
            secret.write_text(password + "\n")
            secret.chmod(0o600)
            process = start_controller(
                procs,
                data_dir,
                mqtt_url=f"mqtt://{USER}@127.0.0.1:{broker.port}",
                extra_args=["--mqtt-password-file", str(secret), "--mqtt-client-id", client_id],
                timeout_s=TIMEOUT,
                insecure=True,
            ).process
        else:
            # No --mqtt at all: the whole URL, password included, from the environment or a
            # 0600 config file.
            url = f"mqtt://{USER}:{password}@127.0.0.1:{broker.port}"
            config: list[str] = []
            if source == "environment":
                monkeypatch.setenv("EDGEFLEET_CONTROLLER_MQTT", url)
                monkeypatch.setenv("EDGEFLEET_CONTROLLER_MQTT_CLIENT_ID", client_id)
            else:
                toml = tmp_path / "controller.toml"
                toml.touch(mode=0o600)
                toml.write_text(f'mqtt = "{url}"\nmqtt-client-id = "{client_id}"\n')
                config = ["--config", str(toml)]
            argv = [
                *script("edge-controller", "edgefleet.controller.cli"),
                "run",
                "--data-dir", str(data_dir),
                "--grpc", f"127.0.0.1:{free_port()}",
                "--api", f"127.0.0.1:{free_port()}",
                "--insecure",
                *config,
            ]  # fmt: skip
            process = procs.spawn("controller", argv, tier=1)
            wait_for_json(data_dir / "controller.json", process, timeout_s=TIMEOUT)
        deadline = time.monotonic() + TIMEOUT
        while not logged_in(broker, client_id):
            assert process.running(), process.log.read_text(errors="replace")[-2000:]
            assert time.monotonic() < deadline, f"{client_id} never logged in to the broker"
            time.sleep(0.1)
        cmdline = Path(f"/proc/{process.popen.pid}/cmdline").read_bytes()
        assert b"edgefleet" in cmdline or b"edge-controller" in cmdline  # the controller's own
        assert password.encode() not in cmdline
        assert password not in process.log.read_text(errors="replace")  # nor in its log


def test_the_database_password_comes_from_its_file(tmp_path: Path) -> None:
    secret = tmp_path / "db.password"
    secret.write_text("p@ss/w:rd\n")
    url = with_db_password_file("postgresql+psycopg://ctl@db:5432/edgefleet", secret)
    parsed = make_url(url)
    assert (parsed.username, parsed.password, parsed.host, parsed.database) == (
        "ctl",
        "p@ss/w:rd",
        "db",
        "edgefleet",
    )
    for refused in ("sqlite:///controller.db", "postgresql://ctl:other@db/edgefleet", "nonsense"):
        with pytest.raises(InvalidInputError):
            with_db_password_file(refused, secret)
    with pytest.raises(InvalidInputError, match="cannot read"):
        with_db_password_file("postgresql://ctl@db/edgefleet", tmp_path / "missing")


def test_every_database_command_takes_the_url_from_the_environment(tmp_path: Path) -> None:
    """``migrate`` (like ``operator`` and ``broker-config``) reads EDGEFLEET_CONTROLLER_DB, so a
    URL with a password in it need not be on their command line either."""
    elsewhere = tmp_path / "elsewhere.db"
    env = {**child_env(), "EDGEFLEET_CONTROLLER_DB": f"sqlite:///{elsewhere}"}
    done = subprocess.run(
        [*script("edge-controller", "edgefleet.controller.cli"), "migrate", "--data-dir",
         str(tmp_path / "data")],
        env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert elsewhere.is_file()
    assert not (tmp_path / "data" / "controller.db").exists()


@pytest.mark.parametrize(
    ("env", "flag", "refused"),
    [
        (None, None, "FROM-FILE"),
        ("FROM-ENV", None, "FROM-ENV"),
        ("FROM-ENV", "FROM-FLAG", "FROM-FLAG"),
    ],
)
def test_a_flag_wins_over_the_environment_which_wins_over_the_config_file(
    tmp_path: Path, env: str | None, flag: str | None, refused: str
) -> None:
    toml = tmp_path / "controller.toml"
    toml.write_text('log_level = "FROM-FILE"\n')
    args = ["run", "--config", str(toml), *(["--log-level", flag] if flag else [])]
    done = CliRunner().invoke(
        app, args, env={"EDGEFLEET_CONTROLLER_LOG_LEVEL": env, "COLUMNS": WIDE}
    )
    assert done.exit_code == 2, done.output
    assert f"unknown log level '{refused}'" in done.output


def test_a_config_file_key_that_is_no_setting_is_refused(tmp_path: Path) -> None:
    toml = tmp_path / "controller.toml"
    toml.write_text('mqtt_pasword_file = "/run/credentials/mqtt"\n')
    done = CliRunner().invoke(app, ["run", "--config", str(toml)], env={"COLUMNS": WIDE})
    assert done.exit_code == 2
    assert "no such setting: mqtt_pasword_file" in done.output
