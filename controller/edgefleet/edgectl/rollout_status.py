"""Drawing a staged rollout: its steps, each device's rollout state and install phase.

Shared by ``edgectl deploy``, ``rollback`` and ``rollout status``. ``status_view`` is the
whole picture (header, steps, device table); ``RolloutLive`` redraws it on stderr while a
command follows the rollout, and shows nothing but the final frame when stderr is not a
terminal. ``rollout_dict`` fixes the JSON shape.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import TYPE_CHECKING, Any

from edgefleet.edgectl import following, output
from edgefleet.edgectl.following import Snapshot
from edgefleet.v1 import controller_pb2 as pb

if TYPE_CHECKING:  # rich: loaded when a command draws, not for --help
    from rich.console import Console, Group, RenderableType
    from rich.table import Table

PHASE_STYLES = {
    "succeeded": "green",
    "canary": "cyan",
    "wave": "cyan",
    "paused": "yellow",
    "rolling_back": "red",
    "rolled_back": "red",
}
DEVICE_STYLES = {
    "healthy": "green",
    "sent": "cyan",
    "failed": "red",
    "rolling_back": "yellow",
    "reverted": "yellow",
    "waiting": "dim",
}


def styled(text: str, styles: dict[str, str]) -> str:
    style = styles.get(text)
    return f"[{style}]{text}[/]" if style and text else text or "-"


def styled_phase(info: pb.RolloutInfo) -> str:
    if following.is_rollback(info) and info.rollout_phase == pb.ROLLOUT_PHASE_ROLLED_BACK:
        return "[green]rolled_back[/]" if following.ok(info) else "[red]rolled_back[/]"
    return styled(following.phase(info), PHASE_STYLES)


def step_text(info: pb.RolloutInfo) -> str:
    """``k/N`` (1-based), or ``-`` for a fleet rollback, which has no steps."""
    if not info.step_sizes:
        return "-"
    return f"{min(info.step + 1, len(info.step_sizes))}/{len(info.step_sizes)}"


def age(ms: int, *, now_ms: int) -> str:
    if ms <= 0:
        return "-"
    s = max(0, (now_ms - ms) // 1000)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def release_text(info: pb.RolloutInfo) -> str:
    if following.is_rollback(info) and not info.release:
        return "(previous)"
    return info.release or "-"


def list_table(rollouts: list[pb.RolloutInfo], *, now_ms: int | None = None) -> Table:
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    t = output.table("ROLLOUT", "FLEET", "RELEASE", "KIND", "PHASE", "STEP", "DEVICES", "AGE")
    for r in rollouts:
        t.add_row(
            r.rollout_id,
            r.fleet,
            release_text(r),
            following.kind(r) or "-",
            styled_phase(r),
            step_text(r),
            f"{following.count(r, 'healthy')}/{following.failed_count(r)}/{following.total(r)}",
            age(r.created_at_ms, now_ms=now),
        )
    return t


def _step_of(info: pb.RolloutInfo) -> list[str]:
    """The step each device belongs to (devices go out in the order listed)."""
    out: list[str] = []
    sizes = list(info.step_sizes)
    for i in range(len(info.devices)):
        k = next((n for n, size in enumerate(sizes) if i < size), None)
        out.append(str(k + 1) if k is not None else "-")
    return out


def steps_line(info: pb.RolloutInfo) -> str:
    """``steps: 1 > 2 > 4 devices``, done steps green and the current one bold."""
    if not info.step_sizes:
        return ""
    parts = []
    for n, size in enumerate(info.step_sizes):
        if info.rollout_phase == pb.ROLLOUT_PHASE_SUCCEEDED or n < info.step:
            parts.append(f"[green]{size}[/]")
        elif n == info.step:
            parts.append(f"[bold]{size}[/]")
        else:
            parts.append(f"[dim]{size}[/]")
    return "steps: " + " > ".join(parts) + " devices (cumulative)"


def header(info: pb.RolloutInfo) -> str:
    healthy, failed = following.count(info, "healthy"), following.failed_count(info)
    counts = f"{healthy} healthy, {failed} failed of {following.total(info)}"
    if following.partial(info):
        counts += f" (the first {len(info.devices)} listed)"
    kind = following.kind(info) or "all-at-once"
    return (
        f"rollout [bold]{info.rollout_id}[/]: {release_text(info)} -> {info.fleet} ({kind}), "
        f"{styled_phase(info)}, step {step_text(info)}, {counts}"
    )


def device_table(snap: Snapshot) -> Table:
    t = output.table("DEVICE", "STEP", "STATE", "INSTALL", "ACTIVE RELEASE", "GEN", "REASON")
    steps = _step_of(snap.info)
    for d, step in zip(snap.info.devices, steps, strict=True):
        seen = snap.devices.get(d.device_id)
        if seen is None:
            phase, active, gen = "[dim]not reported[/]", "-", "-"
        else:
            phase = output.styled_phase(seen.phase)
            phase = phase if seen.online else f"{phase} [red](offline)[/]"
            active = output.safe(seen.active_release) or "-"
            gen = f"{seen.generation_applied}/{seen.generation_desired}"
        t.add_row(
            output.safe(d.device_id),
            step,
            styled(following.state(d), DEVICE_STYLES),
            phase,
            active,
            gen,
            output.safe(
                d.reason
                or (
                    seen.last_error
                    if seen is not None and d.target_state == pb.TARGET_STATE_FAILED
                    else ""
                )
            ),
        )
    return t


BACK_PHASES = (pb.ROLLOUT_PHASE_ROLLING_BACK, pb.ROLLOUT_PHASE_ROLLED_BACK)


def reason_line(info: pb.RolloutInfo) -> str:
    """The rollout's reason, prominent when it explains a rollback (which gate, which figure
    against which threshold, on which device: the controller writes it so)."""
    if not info.reason:
        return ""
    if info.rollout_phase in BACK_PHASES and not following.is_rollback(info):
        return f"[bold red]why it rolled back:[/] [bold]{output.safe(info.reason)}[/]"
    return f"reason: {output.safe(info.reason)}"


def decision_lines(info: pb.RolloutInfo, *, limit: int = 8) -> list[str]:
    """The newest gate decisions of the rollout's history, one line each."""
    gates: list[pb.RolloutTransition] = []
    for h in info.history:
        if h.kind != "gate":
            continue
        if gates and h.message.startswith(gates[-1].message):
            gates.pop()  # the abort a device's failure caused: one line says both
        gates.append(h)
    lines = []
    for h in gates[-limit:]:
        mark = "[green]passed[/]" if h.new == "passed" else "[red]failed[/]"
        lines.append(f"  {output.when(h.at_ms)[-8:]}  {mark}  {output.safe(h.message)}")
    return ["gate decisions:", *lines] if lines else []


def status_view(snap: Snapshot) -> Group:
    from rich.console import Group
    from rich.text import Text

    lines: list[RenderableType] = [Text.from_markup(header(snap.info))]
    if steps := steps_line(snap.info):
        lines.append(Text.from_markup(steps))
    if reason := reason_line(snap.info):
        lines.append(Text.from_markup(reason))
    lines.extend(Text.from_markup(line) for line in decision_lines(snap.info))
    lines.append(device_table(snap))
    return Group(*lines)


class RolloutLive:
    """``with RolloutLive(console) as live: live.update(snapshot)``: the status, redrawn."""

    def __init__(self, console: Console, *, enabled: bool = True) -> None:
        from rich.live import Live
        from rich.spinner import Spinner

        self._spinner = Spinner("dots", text="waiting for the controller")
        self._live = Live(self._spinner, console=console, refresh_per_second=8, transient=True)
        self._enabled = enabled
        self._started = time.monotonic()

    def update(self, snap: Snapshot) -> None:
        elapsed = int(time.monotonic() - self._started)
        self._spinner.update(text=f"following rollout {snap.info.rollout_id} ({elapsed}s)")
        from rich.console import Group

        self._live.update(Group(self._spinner, status_view(snap)))

    def __enter__(self) -> RolloutLive:
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


def rollout_dict(info: pb.RolloutInfo) -> dict[str, Any]:
    s = info.strategy
    return {
        "rollout_id": info.rollout_id,
        "fleet": info.fleet,
        "release": info.release,
        "kind": following.kind(info),
        "phase": following.phase(info),
        "finished": following.finished(info),
        "ok": following.ok(info) if following.finished(info) else None,
        "step": info.step,
        "step_sizes": list(info.step_sizes),
        "reason": info.reason,
        "created_at_ms": info.created_at_ms,
        "updated_at_ms": info.updated_at_ms,
        "healthy": following.count(info, "healthy"),
        "failed": following.failed_count(info),
        "total": following.total(info),
        "strategy": {
            "kind": following.kind(info),
            # the other fields by their names in controller.proto (edgectl deploy's options)
            **{
                f.name: getattr(s, f.name) for f in s.DESCRIPTOR.fields if f.name != "strategy_kind"
            },
        },
        "devices": [
            {
                "device_id": d.device_id,
                "state": following.state(d),
                "generation": d.generation,
                "previous_release": d.previous_release,
                "reason": d.reason,
                "sent_at_ms": d.sent_at_ms,
            }
            for d in info.devices
        ],
        "history": [
            {
                "at_ms": h.at_ms,
                "kind": h.kind,
                "device_id": h.device_id,
                "old": h.old,
                "new": h.new,
                "message": h.message,
            }
            for h in info.history
        ],
    }
