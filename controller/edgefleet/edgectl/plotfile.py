"""The ``--plot FILE`` of edgectl's charts: ``FILE.png`` or ``FILE.svg``, the other beside it.

One place for the suffix rule that ``compress_plot`` and ``rollout_plot`` both follow, and for
the option callback that refuses any other suffix before the controller is asked anything.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import typer

FORMATS = (".png", ".svg")


def plot_paths(path: Path, what: str) -> tuple[Path, Path]:
    """``FILE.png`` -> (``FILE.png``, ``FILE.svg``), and the other way round.

    Raises ValueError for any other suffix, naming ``what`` is written ("a chart").
    """
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"{path}: {what} is written as .png or .svg (and the other beside it)")
    return path, path.with_suffix(".svg" if suffix == ".png" else ".png")


def check_plot(path: Path | None, paths: Callable[[Path], tuple[Path, Path]]) -> Path | None:
    """A ``--plot`` option's check: ``path`` as given, or BadParameter where ``paths`` (a
    module's ``plot_paths``) refuses its suffix."""
    if path is not None:
        try:
            paths(path)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
    return path
