"""Functions the untrusted-model tests run inside sandbox processes.

Apart from the test module so that a sandbox child imports only this (the child imports a
function's module to run it), not the test module and every fixture it pulls in.
"""

from __future__ import annotations

import multiprocessing.process
import os
import sys
from typing import TYPE_CHECKING, Any

from edgefleet.common.errors import NotFoundError

if TYPE_CHECKING:
    from edgefleet.controller.sandbox import Channel


def address_space() -> int:
    """Bytes of address space this process uses now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def child_view() -> dict[str, Any]:
    """What a sandbox child can see of where it runs."""
    fds = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the listing's own descriptor, closed by now
    return {
        "cwd": os.getcwd(),
        "listing": os.listdir("."),
        "fds": fds,
        "argv": list(sys.argv),
        "env": dict(os.environ),
        "start_dir": multiprocessing.process.ORIGINAL_DIR,  # type: ignore[attr-defined]
    }


def conversation(channel: Channel, count: int) -> tuple[int, str, str]:
    """Emit ``count`` events, ask twice: once answered, once refused with ``NotFoundError``."""
    for i in range(count):
        channel.emit(i)
    answer = channel.ask(21)
    try:
        channel.ask(-1)
    except NotFoundError as exc:  # raised here as the controller raised it, attributes too
        return answer, exc.kind, exc.name
    raise AssertionError("the controller's error did not come back")
