"""Why a device failed its rollout, in one line a person understands.

Pure, like the engine that calls it. A device fails either a gate the controller judges (its
error rate, or its p95 latency against its own previous release's) or one the device judged
itself and reported in ``last_error`` (the golden check, the latency budget, a crash loop),
or it never reports in time. ``line`` names who (the canary, a wave's device), which gate,
and the figure against its threshold:

    canary edge-a1 failed the latency gate: p95 12.40 ms > 1.5x baseline 3.10 ms (the previous
    release's p95)
    canary edge-a2 failed the golden check on the device: output 'probs': max abs error 0.31
    is over 0.0001

The controller's own reasons are written here (``latency_gate``, ``error_rate_gate``,
``timed_out``) so that each starts with its gate's name, which ``gate_of`` reads back.
"""

from __future__ import annotations

import re

LATENCY_GATE = "latency gate"
ERROR_RATE_GATE = "error-rate gate"
GOLDEN_CHECK = "golden check"
CRASH_LOOP = "crash-loop check"
OUTPUT_CHECK = "output check"
REPORT_DEADLINE = "report deadline"

# The agent's wrappers around the problem itself (installing, watching), outermost first.
_WRAPPERS = (
    re.compile(r"^\S+ failed its health window, back on \S+: "),
    re.compile(r"^\w+Error: "),
    re.compile(r"^health check: "),
    re.compile(r"^golden check failed: "),
)
_STILL_SERVING = re.compile(r" \(still serving: [^)]*\)$")
_LOG_LINES = "; its last log lines: "  # a container's log: in the device's event, not the line


def latency_gate(p95_ms: float, *, baseline_ms: float, ratio: float) -> str:
    return (
        f"{LATENCY_GATE}: p95 {p95_ms:.2f} ms > {ratio:g}x baseline {baseline_ms:.2f} ms "
        "(the previous release's p95)"
    )


def error_rate_gate(rate: float, *, limit: float) -> str:
    return f"{ERROR_RATE_GATE}: error rate {rate:.1%} > {limit:.1%}"


def timed_out(timeout_s: float, last: str) -> str:
    return f"no report within {timeout_s:g}s: {last}"


def gate_of(reason: str) -> str:
    """The gate a failure reason names; "" when it names none (an install that failed)."""
    for gate in (LATENCY_GATE, ERROR_RATE_GATE):
        if reason.startswith(gate + ":"):
            return gate
    if reason.startswith("no report within "):
        return REPORT_DEADLINE
    text = reason.lower()
    if "crash loop" in text:
        return CRASH_LOOP
    if "golden" in text or "max abs error" in text or "top-1 agreement" in text:
        return GOLDEN_CHECK
    if "latency" in text and "budget" in text:
        return LATENCY_GATE
    if "nan or infinity" in text:
        return OUTPUT_CHECK
    return ""


def core(reason: str) -> str:
    """The problem itself, without the agent's wrappers (the release, what it went back to)."""
    text = _STILL_SERVING.sub("", reason.strip()).split(_LOG_LINES, 1)[0]
    text = text.splitlines()[0] if text else text
    for wrapper in _WRAPPERS:
        text = wrapper.sub("", text, count=1)
    return text


def role(position: int, step_sizes: tuple[int, ...], *, canary: bool) -> str:
    """Who a device was in the rollout, from its position in send order."""
    step = next((n for n, size in enumerate(step_sizes) if position < size), None)
    if step is None or len(step_sizes) == 1:
        return "device"
    if step == 0 and canary:
        return "canary"
    return f"wave {step + 1 if not canary else step} device"


def line(who: str, device_id: str, reason: str) -> str:
    """``canary edge-a1 failed the latency gate: p95 ... > ...``: one device's failure."""
    gate = gate_of(reason)
    subject = f"{who} {device_id}"
    if gate == REPORT_DEADLINE:
        return f"{subject} missed the {gate}: {reason}"
    if gate in (LATENCY_GATE, ERROR_RATE_GATE) and reason.startswith(gate + ":"):
        return f"{subject} failed the {gate}: {reason.removeprefix(gate + ': ')}"
    what = core(reason) or "no reason given"
    if gate:
        return f"{subject} failed the {gate} on the device: {what}"
    return f"{subject} failed on the device: {what}"
