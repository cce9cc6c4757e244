"""Failpoints: named places where a crash test can make the agent die or stall on purpose.

Set ``EDGEFLEET_FAILPOINTS`` to a comma-separated list of ``name=action``::

    EDGEFLEET_FAILPOINTS="fetch_chunk=kill:3"           die on the 3rd chunk written
    EDGEFLEET_FAILPOINTS="fetch_chunk=sleep:0.2"        stall 0.2 s after every chunk
    EDGEFLEET_FAILPOINTS="before_activate=kill"         die on the first hit

Actions: ``kill`` / ``kill:N`` (``os._exit(137)``, like SIGKILL: no cleanup, no flush) on the
first / Nth hit; ``sleep:SECONDS`` on every hit. Points the agent passes:

==========================  ===========================================================
``fetch_chunk``             a downloaded chunk is written and fsynced to the partial file
``after_fetch``             the download is complete, not yet verified
``after_verify``            the blob is verified and moved into the blob store
``after_stage``             the slot dir is complete, phase ``staged`` not yet persisted
``before_activate``         the health check passed; state not yet written
``after_activate_state``    state.json names the new slot; the runtime is not swapped yet
``window_checkup``          a checkup of a health window is about to measure
``after_rollback_state``    state.json names the previous slot again; not swapped back yet
``load_active``             at start, the active slot's load is counted, not yet made
``image_pull``              a container release's pull reports progress (each line)
``after_pull``              the signed image is local and tagged; the slot not staged
``before_container_start``  a release container is about to be created and started
``container_started``       dockerd started a release container; not yet serving/checked
``after_switch``            Predict goes to the new release; the old container still runs
``container_remove``        the sweep is about to remove a container no runtime uses
==========================  ===========================================================

Unset (the normal case) every ``hit`` is one dict lookup.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

from edgefleet.common.errors import InvalidInputError

ENV = "EDGEFLEET_FAILPOINTS"
POINTS = frozenset(
    {
        "fetch_chunk",
        "after_fetch",
        "after_verify",
        "after_stage",
        "before_activate",
        "after_activate_state",
        "window_checkup",
        "after_rollback_state",
        "load_active",
        "image_pull",
        "after_pull",
        "before_container_start",
        "container_started",
        "after_switch",
        "container_remove",
    }
)


@dataclass(frozen=True)
class Rule:
    action: str  # "kill" | "sleep"
    count: int = 1  # kill on this hit
    seconds: float = 0.0  # sleep this long on every hit


def parse(spec: str) -> dict[str, Rule]:
    rules: dict[str, Rule] = {}
    for item in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, action = item.partition("=")
        if not sep or name not in POINTS:
            raise InvalidInputError(f"{ENV}: unknown failpoint {item!r}; known: {sorted(POINTS)}")
        verb, _, arg = action.partition(":")
        try:
            if verb == "kill":
                rules[name] = Rule("kill", count=int(arg or "1"))
            elif verb == "sleep":
                rules[name] = Rule("sleep", seconds=float(arg))
            else:
                raise ValueError(verb)
        except ValueError:
            raise InvalidInputError(
                f"{ENV}: bad action {action!r} for {name}; use kill, kill:N or sleep:SECONDS"
            ) from None
    return rules


_rules: Mapping[str, Rule] = {}
_hits: dict[str, int] = {}
_lock = threading.Lock()


def configure(spec: str) -> None:
    """Arm the failpoints in ``spec`` (replacing any armed before); ``""`` disarms all."""
    global _rules  # noqa: PLW0603 - failpoints are process-wide by nature
    rules = parse(spec)
    with _lock:
        _rules = rules
        _hits.clear()


def configure_from_env() -> None:
    configure(os.environ.get(ENV, ""))


def hit(name: str) -> None:
    rule = _rules.get(name)
    if rule is None:
        return
    if rule.action == "sleep":
        time.sleep(rule.seconds)
        return
    with _lock:
        _hits[name] = n = _hits.get(name, 0) + 1
    if n >= rule.count:
        sys.stderr.write(f"failpoint {name}: killing the agent (hit {n})\n")
        sys.stderr.flush()
        os._exit(137)
