"""The device state that must survive a crash or a power cut: ``<data-dir>/state.json``.

Written whole with ``atomic_write`` (temp file, fsync, ``os.replace``, fsync of the dir), so
the file always holds one complete version. Layout (``version`` 1)::

    {
      "version": 1,
      "generation_applied": 7,          # newest generation finished (installed or failed)
      "phase": "active",                # the last outcome while no install is under way
      "last_error": "",
      "target_release": "digits:1.2.0", # the release of the newest generation taken on
      "active":   {"slot": "g7", "release": "digits:1.1.0",
                   "manifest_digest": "sha256:...", "model_digest": "sha256:...",
                   "golden_digest": "sha256:..." | ""},
      "previous": {...} | null,         # the slot before; kept on disk for a fall-back
      "install":  {"generation": 8, "release": "digits:1.2.0", "slot": "g8",
                   "phase": "fetching", "attempts": 1,
                   "manifest_digest": "sha256:...", "model_digest": "sha256:...",
                   "golden_digest": "sha256:..." | "",
                   "desired_b64": "..."} | null,  # the signed desired state, re-verified on start
      "window":   {"generation": 7, "release": "digits:1.1.0", "slot": "g7",
                   "previous_slot": "g6", "started_at_ms": 1700000000000, "duration_s": 30.0,
                   "runtime_failures": 0, "last_failure": ""} | null,
      "load_failures": 0,               # failed (or crashed) loads of the active slot in a row
      "load_error": ""                  # why the last of them failed
    }

``window`` is written together with the activation it watches (before the runtime is
swapped) and cleared when the window passes or the release is rolled back: a start that finds
it set knows the release never passed. ``load_failures`` is counted up *before* each load of
the active slot at start and reset after it loaded, so a crash while loading counts too. Keys
added after the first agents shipped are optional when read.

A missing or unreadable ``state.json`` is not the end of the installed models: ``restoring``
sets an unreadable one aside (``state.json.corrupt``) and rebuilds the state from the signed
slots on disk.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from edgefleet.agent.errors import StateFileError
from edgefleet.common.artifacts import atomic_write
from edgefleet.common.types import InstallPhase

VERSION = 1


@dataclass(frozen=True)
class SlotInfo:
    """An installed, verified release in ``slots/<slot>``."""

    slot: str
    release: str
    manifest_digest: str
    model_digest: str
    golden_digest: str = ""  # "" when the release has no golden data


@dataclass(frozen=True)
class HealthWindow:
    """An activated release being watched; the previous slot is where a failure goes back to."""

    generation: int
    release: str
    slot: str
    previous_slot: str  # "" when there was no release before
    started_at_ms: int  # wall clock, for people; the watch itself times with a monotonic clock
    duration_s: float
    runtime_failures: int = 0
    last_failure: str = ""


@dataclass(frozen=True)
class PendingInstall:
    generation: int
    release: str
    slot: str
    phase: InstallPhase
    manifest_digest: str
    model_digest: str
    desired: bytes  # the signed desired state exactly as received
    attempts: int = 0
    golden_digest: str = ""


@dataclass(frozen=True)
class DeviceState:
    generation_applied: int = 0
    phase: InstallPhase = InstallPhase.IDLE
    last_error: str = ""
    target_release: str = ""  # the release of the newest generation taken on
    active: SlotInfo | None = None
    previous: SlotInfo | None = None
    install: PendingInstall | None = None
    window: HealthWindow | None = None
    load_failures: int = 0
    load_error: str = ""

    @property
    def reported_phase(self) -> InstallPhase:
        return self.install.phase if self.install is not None else self.phase

    def rolled_back(self, reason: str) -> DeviceState:
        """Back on the previous slot (or on none, when there was none), the window closed.

        ``generation_applied`` stays: the generation that brought the failed release is done.
        """
        return replace(
            self,
            active=self.previous,
            previous=None,
            window=None,
            load_failures=0,
            load_error="",
            phase=InstallPhase.ROLLED_BACK,
            last_error=reason,
        )


def _slot_to_json(s: SlotInfo | None) -> dict[str, str] | None:
    if s is None:
        return None
    return {
        "slot": s.slot,
        "release": s.release,
        "manifest_digest": s.manifest_digest,
        "model_digest": s.model_digest,
        "golden_digest": s.golden_digest,
    }


def _window_to_json(w: HealthWindow | None) -> dict[str, Any] | None:
    return None if w is None else asdict(w)


def _window_from_json(d: Any) -> HealthWindow | None:
    if d is None:
        return None
    return HealthWindow(
        generation=int(d["generation"]),
        release=str(d["release"]),
        slot=str(d["slot"]),
        previous_slot=str(d["previous_slot"]),
        started_at_ms=int(d["started_at_ms"]),
        duration_s=float(d["duration_s"]),
        runtime_failures=int(d.get("runtime_failures", 0)),
        last_failure=str(d.get("last_failure", "")),
    )


def _slot_from_json(d: Any) -> SlotInfo | None:
    if d is None:
        return None
    return SlotInfo(
        slot=str(d["slot"]),
        release=str(d["release"]),
        manifest_digest=str(d["manifest_digest"]),
        model_digest=str(d["model_digest"]),
        golden_digest=str(d.get("golden_digest", "")),
    )


def to_json(state: DeviceState) -> bytes:
    i = state.install
    out = {
        "version": VERSION,
        "generation_applied": state.generation_applied,
        "phase": state.phase.value,
        "last_error": state.last_error,
        "target_release": state.target_release,
        "active": _slot_to_json(state.active),
        "previous": _slot_to_json(state.previous),
        "install": None
        if i is None
        else {
            "generation": i.generation,
            "release": i.release,
            "slot": i.slot,
            "phase": i.phase.value,
            "attempts": i.attempts,
            "manifest_digest": i.manifest_digest,
            "model_digest": i.model_digest,
            "golden_digest": i.golden_digest,
            "desired_b64": base64.b64encode(i.desired).decode(),
        },
        "window": _window_to_json(state.window),
        "load_failures": state.load_failures,
        "load_error": state.load_error,
    }
    return json.dumps(out, indent=2).encode() + b"\n"


def from_json(data: bytes) -> DeviceState:
    d = json.loads(data)
    if d.get("version") != VERSION:
        raise ValueError(f"unknown state version {d.get('version')!r}")
    i = d.get("install")
    return DeviceState(
        generation_applied=int(d["generation_applied"]),
        phase=InstallPhase(d["phase"]),
        last_error=str(d.get("last_error", "")),
        target_release=str(d.get("target_release", "")),
        active=_slot_from_json(d.get("active")),
        previous=_slot_from_json(d.get("previous")),
        install=None
        if i is None
        else PendingInstall(
            generation=int(i["generation"]),
            release=str(i["release"]),
            slot=str(i["slot"]),
            phase=InstallPhase(i["phase"]),
            attempts=int(i.get("attempts", 0)),
            manifest_digest=str(i["manifest_digest"]),
            model_digest=str(i["model_digest"]),
            golden_digest=str(i.get("golden_digest", "")),
            desired=base64.b64decode(i["desired_b64"], validate=True),
        ),
        window=_window_from_json(d.get("window")),
        load_failures=int(d.get("load_failures", 0)),
        load_error=str(d.get("load_error", "")),
    )


class StateFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def exists(self) -> bool:
        return self.path.exists()

    def set_aside(self) -> Path:
        """Move an unreadable state file out of the way (kept for a post-mortem); its new path."""
        aside = self.path.with_name(f"{self.path.name}.corrupt")
        self.path.replace(aside)
        return aside

    def load(self) -> DeviceState:
        """The saved state; a fresh one when there is none; ``StateFileError`` when unreadable."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return DeviceState()
        try:
            return from_json(data)
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise StateFileError(
                f"{self.path} is unreadable ({exc}); move it away to start from scratch"
            ) from exc

    def save(self, state: DeviceState) -> None:
        atomic_write(self.path, to_json(state))
