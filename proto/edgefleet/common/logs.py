"""Logging set-up: JSON lines when run as a service, plain text in a terminal.

Modules log through ``logging.getLogger(__name__)`` with %-style arguments; context such as
``device``, ``fleet`` and ``rollout`` rides along in ``extra`` (see ``ContextAdapter``).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

_CONTEXT_KEYS = ("device", "fleet", "rollout", "release")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in _CONTEXT_KEYS:
            if (value := getattr(record, key, None)) is not None:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


class ContextAdapter(logging.LoggerAdapter[logging.Logger]):
    """Adds fixed context (device, fleet, ...) to every record."""

    def __init__(self, logger: logging.Logger, context: Mapping[str, str]) -> None:
        super().__init__(logger, dict(context))

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


def setup(level: str = "INFO", *, json_lines: bool | None = None) -> None:
    """Configure the root logger once per process."""
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    handler = logging.StreamHandler()
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
