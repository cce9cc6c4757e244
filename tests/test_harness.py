"""The suite's own checks can fail: the root conftest's leaked-thread check and pytest's
unhandled-thread-exception warning, run on small tests of their own in a child pytest that
uses this repository's pytest settings (pyproject.toml) and the root conftest's fixture."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CONFTEST = """
from tests.conftest import _no_leaked_threads  # noqa: F401  (the autouse check under test)
"""

TESTS = """
import threading
from concurrent import futures

import pytest

stop = threading.Event()


def test_a_non_daemon_thread_left_running():
    threading.Thread(target=stop.wait, args=(30,), name="helper", daemon=False).start()


def test_an_edgefleet_daemon_thread_left_running():
    threading.Thread(target=stop.wait, args=(30,), name="agent-worker", daemon=True).start()


def test_a_thread_that_ends_within_the_grace_is_no_leak():
    threading.Thread(target=stop.wait, args=(0.3,), name="agent-brief", daemon=False).start()


def test_a_plain_daemon_thread_is_not_checked():
    threading.Thread(target=stop.wait, args=(30,), name="library-daemon", daemon=True).start()


def test_a_thread_that_raises():
    def boom():
        raise RuntimeError("boom in a thread")

    t = threading.Thread(target=boom, name="raiser")
    t.start()
    t.join()


@pytest.fixture(scope="module")
def pool():
    with futures.ThreadPoolExecutor(2, thread_name_prefix="api_") as p:
        yield p


def test_a_wider_fixtures_pool_starting_a_worker_is_no_leak(pool):
    pool.submit(lambda: None).result()


def test_the_tests_own_pool_left_open():
    p = futures.ThreadPoolExecutor(1, thread_name_prefix="grpc_")
    p.submit(lambda: None).result()
    test_the_tests_own_pool_left_open.pool = p  # not shut down: its worker waits


def test_zz_release():
    stop.set()
"""


def _outcomes(out: str) -> dict[str, set[str]]:
    """{test name: outcomes} from ``-rA``'s summary lines (a teardown error is ERROR)."""
    seen: dict[str, set[str]] = {}
    for m in re.finditer(r"^(PASSED|FAILED|ERROR) \S+::(\w+)", out, re.M):
        seen.setdefault(m.group(2), set()).add(m.group(1))
    return seen


def test_thread_exceptions_are_not_silenced_in_pyproject() -> None:
    opts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    filters = opts["filterwarnings"]
    assert filters[0] == "error", filters
    assert not [f for f in filters if "UnhandledThreadException" in f], filters


def test_leaked_threads_and_thread_exceptions_fail_their_test(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_threads.py").write_text(TESTS)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"),
         "--rootdir", str(tmp_path), "-p", "no:cacheprovider", "-rA", "-q", str(tmp_path)],
        check=False, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240,
    )  # fmt: skip
    out = run.stdout + run.stderr
    got = _outcomes(out)
    assert got["test_a_non_daemon_thread_left_running"] == {"PASSED", "ERROR"}, out
    assert got["test_an_edgefleet_daemon_thread_left_running"] == {"PASSED", "ERROR"}, out
    assert got["test_the_tests_own_pool_left_open"] == {"PASSED", "ERROR"}, out
    assert got["test_a_thread_that_raises"] == {"FAILED"}, out
    for fine in (
        "test_a_thread_that_ends_within_the_grace_is_no_leak",
        "test_a_plain_daemon_thread_is_not_checked",
        "test_a_wider_fixtures_pool_starting_a_worker_is_no_leak",
        "test_zz_release",
    ):
        assert got[fine] == {"PASSED"}, (fine, out)
    assert "the test left threads running: helper (daemon=False)" in out
    assert "the test left threads running: agent-worker (daemon=True)" in out
    assert "boom in a thread" in out
    assert run.returncode == 1, out
