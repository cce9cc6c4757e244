"""Drawing a deploy's progress: a live bar and device rows while it runs, a table at the end.

Shared by ``edgectl deploy`` and ``edgectl demo``. The live part goes to stderr and shows
nothing but the final frame when stderr is not a terminal.
"""

from __future__ import annotations

from types import TracebackType

from rich.console import Console, Group
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from edgefleet.common import wire
from edgefleet.edgectl import output
from edgefleet.edgectl.convergence import DeviceProgress, Outcome, RolloutProgress
from edgefleet.edgectl.watching import WatchResult

OUTCOME_TEXT = {
    Outcome.CONVERGED: "[green]converged[/]",
    Outcome.FAILED: "[red]failed[/]",
    Outcome.PENDING: "[yellow]pending[/]",
}


def _phase(d: DeviceProgress) -> str:
    if d.observed is None:
        return "[dim]not reported[/]"
    phase = d.observed.phase
    text = output.styled_phase(wire.phase_to_pb(phase)) if phase is not None else "-"
    return text if d.observed.online else f"{text} [red](offline)[/]"


def device_rows(progress: RolloutProgress) -> Table:
    t = output.table("DEVICE", "PHASE", "ACTIVE RELEASE", "GENERATION", "STATE")
    for d in progress.devices:
        seen = d.observed
        applied = seen.generation_applied if seen is not None else 0
        t.add_row(
            d.device_id,
            _phase(d),
            (seen.active_release if seen is not None else "") or "-",
            f"{applied}/{d.target_generation}",
            OUTCOME_TEXT[d.outcome],
        )
    return t


class RolloutView:
    """``with RolloutView(console, title=..., total=n) as view: view.update(progress)``."""

    def __init__(self, console: Console, *, title: str, total: int, enabled: bool = True) -> None:
        self._bar = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        self._task = self._bar.add_task(title, total=total)
        self._live = Live(self._bar, console=console, refresh_per_second=8, transient=True)
        self._enabled = enabled

    def update(self, progress: RolloutProgress) -> None:
        self._bar.update(self._task, completed=progress.count(Outcome.CONVERGED))
        self._live.update(Group(self._bar, device_rows(progress)))

    def __enter__(self) -> RolloutView:
        if self._enabled:
            self._live.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._enabled:
            self._live.stop()


def result_table(result: WatchResult) -> Table:
    """The end of a deploy: one row per target device, with its last error."""
    t = output.table("DEVICE", "PHASE", "ACTIVE RELEASE", "GENERATION", "RESULT", "LAST ERROR")
    for d in result.progress.devices:
        seen = d.observed
        state = OUTCOME_TEXT[d.outcome]
        if d.outcome is Outcome.PENDING and result.timed_out:
            state = "[red]timed out[/]"
        t.add_row(
            d.device_id,
            _phase(d),
            (seen.active_release if seen is not None else "") or "-",
            f"{seen.generation_applied if seen is not None else 0}/{d.target_generation}",
            state,
            seen.last_error if seen is not None else "",
        )
    return t
