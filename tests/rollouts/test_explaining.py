"""The one-line explanation of a device's failure: who, which gate, which figure against which
threshold, from the reasons the engine writes and the ones real agents report."""

from __future__ import annotations

import pytest

from edgefleet.controller.rollouts import explaining


@pytest.mark.parametrize(
    ("reason", "line"),
    [
        (
            explaining.latency_gate(12.4, baseline_ms=3.1, ratio=1.5),
            "canary a1 failed the latency gate: p95 12.40 ms > 1.5x baseline 3.10 ms "
            "(the previous release's p95)",
        ),
        (
            explaining.error_rate_gate(0.12, limit=0.01),
            "canary a1 failed the error-rate gate: error rate 12.0% > 1.0%",
        ),
        (
            explaining.timed_out(60, "it never reported"),
            "canary a1 missed the report deadline: no report within 60s: it never reported",
        ),
        (
            "d:1.1.0 failed its health window, back on d:1.0.0: golden check failed: "
            "output 'probs': max abs error 0.31 is over 0.0001",
            "canary a1 failed the golden check on the device: "
            "output 'probs': max abs error 0.31 is over 0.0001",
        ),
        (
            "ModelLoadError: health check: median latency 3.000 ms (p95 3.100 ms, 20 runs) is "
            "over the budget of 1 ms",
            "canary a1 failed the latency gate on the device: median latency 3.000 ms "
            "(p95 3.100 ms, 20 runs) is over the budget of 1 ms",
        ),
        (
            "d:1.1.0 failed its health window, back on d:1.0.0: live p95 latency 9.000 ms over "
            "20 Predict calls is over the budget of 5 ms",
            "canary a1 failed the latency gate on the device: live p95 latency 9.000 ms over "
            "20 Predict calls is over the budget of 5 ms",
        ),
        (
            "crash loop: d:1.1.0 failed to load 3 times; last: boom",
            "canary a1 failed the crash-loop check on the device: "
            "crash loop: d:1.1.0 failed to load 3 times; last: boom",
        ),
        (
            "FetchError: digest mismatch (still serving: d:1.0.0)",
            "canary a1 failed on the device: digest mismatch",
        ),
        (
            "ModelLoadError: health check: output 'y': max abs error 0.5 is over 0.0001; "
            "its last log lines: loading\\nready",
            "canary a1 failed the golden check on the device: "
            "output 'y': max abs error 0.5 is over 0.0001",
        ),
    ],
    ids=[
        "latency",
        "error-rate",
        "timeout",
        "golden",
        "budget",
        "live-p95",
        "crash",
        "other",
        "container-log",
    ],
)
def test_each_failure_is_one_line_naming_gate_figure_and_threshold(reason: str, line: str) -> None:
    assert explaining.line("canary", "a1", reason) == line


@pytest.mark.parametrize(
    ("position", "sizes", "canary", "who"),
    [
        (0, (1, 2, 4), True, "canary"),
        (1, (1, 2, 4), True, "wave 1 device"),
        (3, (1, 2, 4), True, "wave 2 device"),
        (0, (2, 4), False, "wave 1 device"),
        (3, (2, 4), False, "wave 2 device"),
        (0, (4,), False, "device"),
    ],
)
def test_the_role_comes_from_the_position_in_send_order(
    position: int, sizes: tuple[int, ...], canary: bool, who: str
) -> None:
    assert explaining.role(position, sizes, canary=canary) == who
