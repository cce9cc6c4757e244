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
                   "manifest_digest": "sha256:...", "model_digest": "sha256:..."},
      "previous": {...} | null,         # the slot before; kept on disk for a fall-back
      "install":  {"generation": 8, "release": "digits:1.2.0", "slot": "g8",
                   "phase": "fetching", "attempts": 1,
                   "manifest_digest": "sha256:...", "model_digest": "sha256:...",
                   "desired_b64": "..."} | null   # the signed desired state, re-verified on start
    }
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
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


@dataclass(frozen=True)
class DeviceState:
    generation_applied: int = 0
    phase: InstallPhase = InstallPhase.IDLE
    last_error: str = ""
    target_release: str = ""  # the release of the newest generation taken on
    active: SlotInfo | None = None
    previous: SlotInfo | None = None
    install: PendingInstall | None = None

    @property
    def reported_phase(self) -> InstallPhase:
        return self.install.phase if self.install is not None else self.phase


def _slot_to_json(s: SlotInfo | None) -> dict[str, str] | None:
    if s is None:
        return None
    return {
        "slot": s.slot,
        "release": s.release,
        "manifest_digest": s.manifest_digest,
        "model_digest": s.model_digest,
    }


def _slot_from_json(d: Any) -> SlotInfo | None:
    if d is None:
        return None
    return SlotInfo(
        slot=str(d["slot"]),
        release=str(d["release"]),
        manifest_digest=str(d["manifest_digest"]),
        model_digest=str(d["model_digest"]),
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
            "desired_b64": base64.b64encode(i.desired).decode(),
        },
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
            desired=base64.b64decode(i["desired_b64"], validate=True),
        ),
    )


class StateFile:
    def __init__(self, path: Path) -> None:
        self.path = path

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
