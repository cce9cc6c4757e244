"""Real networks: the broker and the controller on one host, each agent on its own, every host a
network namespace this test makes, joined by veth to a bridge; links cut with ``ip link set
down`` and degraded with ``tc`` (netem where the kernel has it; else tbf for the rate and
iptables for the loss, without the delay). What each scenario does: ``scenarios``.

Needs root (or CAP_NET_ADMIN) and Mosquitto; skips, saying why, where either is missing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import mosquitto_available
from tests.network import netns, scenarios

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture(autouse=True)
def _namespaces_allowed() -> Iterator[None]:
    if not mosquitto_available():
        pytest.skip("mosquitto is not installed (apt-get install mosquitto; .ci/run does)")
    reason = netns.refused_reason()
    if reason is not None:
        pytest.skip(reason)
    yield


def test_a_rollout_completes_over_slow_lossy_links(tmp_path: Path) -> None:
    result = scenarios.rollout_over_bad_links(tmp_path)
    assert result.applied.rate_kbit == 1000 and result.applied.loss_pct == 5.0
    assert result.exit_code == 0, result.output
    assert set(result.active.values()) == {"bigdigits:1.0.0"}, result.output


def test_a_download_cut_ten_times_resumes_and_verifies(tmp_path: Path) -> None:
    result = scenarios.download_cut_ten_times(tmp_path)
    assert result.exit_code == 0, result.output
    assert result.cuts == 10, f"the download ended after {result.cuts} cuts\n{result.output}"
    assert result.resumed >= 10, result.output  # one fetch_resumed per cut, at least
    assert result.verified and result.active == "bigdigits:1.0.0", result.output
    assert result.resent_bytes == 0  # every resume began where the bytes on disk ended


def test_a_device_cut_off_for_an_hour_serves_and_catches_up(tmp_path: Path) -> None:
    result = scenarios.partition_for_an_hour(tmp_path)
    big, small = sorted(result.served_while_cut)
    # cut off, each device kept serving its own apps
    assert result.served_while_cut == {big: result.asked_while_cut, small: result.asked_while_cut}
    # its health window passed while cut off; healed, the rollout finished
    assert result.window_passed_offline == {big: True, small: True}, result.output
    assert result.exit_code == 0, result.output
    assert set(result.active.values()) == {"digits:1.0.0"}
    # what the hour measured reached the broker (both outboxes were seen empty after the
    # heal, or the scenario raised): all of it within the outbox's bound...
    assert result.dropped[big] == 0
    assert result.samples_while_cut[big] > 0
    # ... and beyond it the oldest were dropped, and counted
    assert result.dropped[small] > 0
    assert result.samples_while_cut[small] < result.samples_while_cut[big]


def test_killing_an_agent_fails_over_to_another_host_within_3_s(tmp_path: Path) -> None:
    run = scenarios.failover_across_hosts(tmp_path)
    assert run.failed == 0, run.errors[:3]
    assert run.answered_local > 0 and run.answered_neighbour > 0
    first = run.first_answer_after_kill_s
    assert first is not None and first <= 3.0, f"first neighbour answer {first}s after the kill"
