"""Process helpers behind ``edgectl demo`` and the e2e tests: no orphans, clear failures."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from edgefleet.demo.errors import StartError
from edgefleet.demo.processes import Processes, wait_for_json
from edgefleet.demo.stack import Mtls, start_broker, start_controller

# a parent that starts a child in its own process group and ignores SIGTERM itself
STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print(child.pid, flush=True)
time.sleep(60)
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); it is gone for our purposes
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def test_stop_all_leaves_no_process_behind(tmp_path: Path) -> None:
    with Processes(tmp_path / "logs") as procs:
        parent = procs.spawn("stubborn", [sys.executable, "-c", STUBBORN])
        deadline = time.monotonic() + 10
        while not parent.tail().strip() and time.monotonic() < deadline:
            time.sleep(0.05)
        child_pid = int(parent.tail().split()[0])
        procs.stop_all(grace_s=0.5)
    assert not parent.running()
    deadline = time.monotonic() + 5
    while alive(child_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child_pid)


def test_a_process_that_dies_while_starting_shows_its_log(tmp_path: Path) -> None:
    with Processes(tmp_path / "logs") as procs:
        proc = procs.spawn(
            "crasher", [sys.executable, "-c", "print('boom: bad flag'); raise SystemExit(3)"]
        )
        with pytest.raises(StartError) as info:
            wait_for_json(tmp_path / "ready.json", proc, timeout_s=10)
    assert "crasher exited with code 3" in str(info.value)
    assert "boom: bad flag" in info.value.log_tail


def test_embedded_amqtt_broker_serves_mqtt(tmp_path: Path) -> None:
    pytest.importorskip("amqtt")
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    with Processes(tmp_path / "logs") as procs:
        broker = start_broker(procs, tmp_path, kind="amqtt")
        assert broker.kind == "amqtt"
        client = mqtt.Client(CallbackAPIVersion.VERSION2)
        port = int(broker.url.rsplit(":", 1)[1])
        assert client.connect("127.0.0.1", port) == mqtt.MQTT_ERR_SUCCESS
        client.disconnect()
    assert not broker.process.running()


def execed(pid: int) -> bool:
    """Whether ``pid`` runs the sleeper itself now, no longer the launcher before it."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return argv[1:3] == [b"-c", b"import time; time.sleep(60)"]


HARNESS = """
import sys, time
from pathlib import Path
from edgefleet.demo.processes import Processes
procs = Processes(Path(sys.argv[1]))
child = procs.spawn("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"])
print(child.pid, flush=True)
time.sleep(60)
"""


def test_children_stop_when_their_starter_is_killed(tmp_path: Path) -> None:
    import signal
    import subprocess

    harness = subprocess.Popen(
        [sys.executable, "-c", HARNESS, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert harness.stdout is not None
    child_pid = int(harness.stdout.readline())
    deadline = time.monotonic() + 10  # the launcher has set its death signal once it exec'd
    while not execed(child_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert execed(child_pid)
    harness.send_signal(signal.SIGKILL)  # no finally, no atexit
    harness.wait(10)
    harness.stdout.close()
    deadline = time.monotonic() + 10
    while alive(child_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child_pid)


def test_plaintext_is_never_a_default_of_start_controller(tmp_path: Path) -> None:
    """Neither ``mtls=`` nor ``insecure=True`` (nor both): refused before anything starts."""
    mtls = Mtls(broker_dir=tmp_path / "broker", controller_dir=tmp_path / "data")
    refused = pytest.raises(ValueError, match=r"needs mtls= .* or insecure=True")
    with Processes(tmp_path / "logs") as procs:
        with refused:
            start_controller(procs, mtls.controller_dir, mqtt_url="mqtt://127.0.0.1:1")
        with refused:
            start_controller(
                procs, mtls.controller_dir, mqtt_url="mqtt://127.0.0.1:1", mtls=mtls, insecure=True
            )
        assert procs.started == []
