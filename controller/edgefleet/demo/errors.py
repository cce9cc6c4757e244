"""Why a demo (or an end-to-end run) stopped.

::

    EdgeFleetError
    ├── StartError   a process did not come up (.name, .log_tail: the end of its log)
    └── DemoFailed   a step ran but its check failed (a rollout, an accuracy)
"""

from __future__ import annotations

from edgefleet.common.errors import EdgeFleetError


class StartError(EdgeFleetError):
    def __init__(self, name: str, reason: str, *, log_tail: str = "") -> None:
        super().__init__(f"{name} {reason}")
        self.name = name
        self.log_tail = log_tail


class DemoFailed(EdgeFleetError):
    """A demo step ran to its end, but what it checks did not hold."""
