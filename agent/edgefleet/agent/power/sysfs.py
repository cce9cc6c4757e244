"""Small sysfs helpers shared by the readers: rooted paths, integer attributes, natural order.

Every reader takes a ``root`` (``/`` on a device, a fixture tree in tests) and builds paths
with ``under``, so absolute sysfs paths never leak past this module.
"""

from __future__ import annotations

import re
from pathlib import Path

from edgefleet.agent.power.sample import PowerReadError

_DIGITS = re.compile(r"(\d+)")


def under(root: Path, absolute: str) -> Path:
    """``absolute`` (a path like ``/sys/class/powercap``) re-rooted at ``root``."""
    return root / absolute.lstrip("/")


def natural_key(path: Path) -> tuple[str | int, ...]:
    """Sort key that puts ``hwmon10`` after ``hwmon2`` and ``intel-rapl:10`` after ``:9``."""
    return tuple(int(part) if part.isdigit() else part for part in _DIGITS.split(path.name))


def sorted_glob(directory: Path, pattern: str) -> list[Path]:
    return sorted(directory.glob(pattern), key=natural_key)


def read_text(path: Path) -> str | None:
    """The attribute's text without the trailing newline or NUL; None when absent or unreadable."""
    try:
        return path.read_text(errors="replace").strip().rstrip("\x00")
    except OSError:
        return None


def read_number(path: Path, *, source: str) -> int:
    """An integer attribute that must be there; ``PowerReadError`` when it cannot be read."""
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise PowerReadError(source, f"{path.name}: {exc.strerror or exc}") from exc
    try:
        return int(text)
    except ValueError as exc:
        raise PowerReadError(source, f"{path.name}: not a number: {text!r}") from exc


def readable_number(path: Path) -> bool:
    """True when ``path`` holds an integer this process may read (probing, not reading)."""
    try:
        int(path.read_text().strip())
    except (OSError, ValueError):
        return False
    return True
