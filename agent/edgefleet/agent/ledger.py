"""The device state, in memory and in ``state.json`` together: every change goes through here.

Used by the worker thread only (``journal``, ``switching`` and ``watching``). ``commit``
writes the state atomically, drops the slots and blobs it no longer names (when asked), then
reports it.
``save`` only writes: activation and rollback save, swap the runtime, then ``report``, so the
state on disk always names what a restart should serve.
"""

from __future__ import annotations

import logging

from edgefleet.agent.reporting import Reporter
from edgefleet.agent.state import DeviceState, StateFile
from edgefleet.agent.store import SlotStore

log = logging.getLogger(__name__)


class Ledger:
    def __init__(self, *, state_file: StateFile, store: SlotStore, reporter: Reporter) -> None:
        self._state_file = state_file
        self._store = store
        self._reporter = reporter
        self.state = DeviceState()

    def save(self, state: DeviceState) -> None:
        self._state_file.save(state)
        self.state = state

    def commit(self, state: DeviceState, *, prune: bool = False) -> None:
        """Persist ``state``, drop what it no longer names (when asked), then report it."""
        self.save(state)
        if prune:
            self.prune()
        self.report()

    def report(self) -> None:
        self._reporter.update(self.state)

    def prune(self) -> None:
        """Keep the active and previous slots and the install under way; drop the rest."""
        s = self.state
        keep = [x for x in (s.active, s.previous) if x is not None]
        slots = [x.slot for x in keep]
        blobs = [d for x in keep for d in (x.model_digest, x.golden_digest) if d]
        partials: list[str] = []
        if s.install is not None:
            slots.append(s.install.slot)
            partials = [d for d in (s.install.model_digest, s.install.golden_digest) if d]
            blobs += partials
        try:
            self._store.prune(slots=slots, blobs=blobs, partials=partials)
        except OSError:
            log.exception("could not remove old slots")
