"""``--metric-module PATH_OR_MODULE[:FUNCTION]``: the source text of a user's metric.

edgectl reads the module's source (a ``.py`` file, or an importable module found by name
without running it: ``importlib.util.find_spec``) and sends the text in the request; the
controller never imports it, and runs it only in a seccomp-confined process of its compression
sandbox (``edgefleet.controller.compress.metric_hook``). One file: the module may import numpy
and a few standard modules (math, re, json, difflib, itertools, collections, functools,
statistics, string, unicodedata), not its own package or files.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

DEFAULT_FUNCTION = "score"
MAX_SOURCE_BYTES = 256 * 1024


class MetricSourceError(ValueError):
    """The module named cannot be read (the message says why)."""


@dataclass(frozen=True)
class MetricSource:
    source: str
    function: str
    origin: str  # the file's name, for the controller's messages


def read_metric_module(text: str) -> MetricSource:
    """``PATH_OR_MODULE[:FUNCTION]`` (FUNCTION default ``score``) -> its source text."""
    target, sep, function = text.strip().rpartition(":")
    if not sep or not function.isidentifier() or not target:
        target, function = text.strip(), DEFAULT_FUNCTION
    path = Path(target)
    if path.suffix != ".py" and not path.is_file():
        try:
            spec = importlib.util.find_spec(target)
        except (ImportError, ValueError) as exc:
            raise MetricSourceError(f"no module {target!r}: {exc}") from None
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            raise MetricSourceError(
                f"no Python source for {target!r}: give a .py file or an importable module"
            )
        path = Path(spec.origin)
    if not path.is_file():
        raise MetricSourceError(f"no such file: {path}")
    raw = path.read_bytes()
    if len(raw) > MAX_SOURCE_BYTES:
        raise MetricSourceError(f"{path} is over {MAX_SOURCE_BYTES // 1024} KiB")
    try:
        source = raw.decode()
    except UnicodeDecodeError:
        raise MetricSourceError(f"{path} is not UTF-8 text") from None
    return MetricSource(source, function, path.name)
