"""The parts of an install on their own (``downloading.Downloader``, ``journal.InstallJournal``):
a real slot store, ``state.json`` and outbox; what they report is read back from the outbox."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from edgefleet.agent import reconcile as r
from edgefleet.agent.downloading import Downloader
from edgefleet.agent.journal import InstallJournal
from edgefleet.agent.ledger import Ledger
from edgefleet.agent.metrics import AgentMetrics
from edgefleet.agent.outbox import Outbox
from edgefleet.agent.reporting import Reporter
from edgefleet.agent.state import DeviceState, StateFile
from edgefleet.agent.store import SlotStore
from edgefleet.common import digests, wire
from edgefleet.common import types as t
from edgefleet.common.errors import IntegrityError, NotFoundError
from edgefleet.common.types import InstallPhase

BLOB = b"the model's bytes"
DIGEST = digests.of_bytes(BLOB)


class _Device:
    def __init__(self, tmp_path: Path) -> None:
        self.store = SlotStore(tmp_path / "data")
        self.outbox = Outbox(tmp_path / "outbox.db")
        self.reporter = Reporter(
            device_id="dev-1", fleet="f", labels={}, agent_version="test", outbox=self.outbox
        )
        self.state_file = StateFile(tmp_path / "state.json")
        ledger = Ledger(state_file=self.state_file, store=self.store, reporter=self.reporter)
        self.journal = InstallJournal(ledger=ledger, reporter=self.reporter)
        self.downloader = Downloader(
            store=self.store,
            reporter=self.reporter,
            metrics=AgentMetrics(),
            stopping=threading.Event(),
            deadline_s=5.0,
        )

    def events(self) -> list[t.DeviceEvent]:
        return [wire.decode_event(m.payload) for m in self.outbox.pending()]


@pytest.fixture
def device(tmp_path: Path) -> _Device:
    return _Device(tmp_path)


def test_verify_adopts_the_signed_bytes(device: _Device) -> None:
    device.store.partial(DIGEST).write_bytes(BLOB)
    device.downloader.verify(r.Verify(3, DIGEST, len(BLOB)), release="m:1")
    assert device.store.blobs.has(DIGEST)
    assert device.store.partial_size(DIGEST) == 0
    [event] = device.events()
    assert (event.kind, event.release, event.generation) == ("verified", "m:1", 3)
    assert event.phase is InstallPhase.VERIFYING


@pytest.mark.parametrize(
    ("written", "size"),
    [(bytes(len(BLOB)), len(BLOB)), (BLOB + b"!", len(BLOB))],
    ids=["wrong digest", "wrong size"],
)
def test_verify_drops_bytes_that_are_not_the_signed_ones(
    device: _Device, written: bytes, size: int
) -> None:
    device.store.partial(DIGEST).write_bytes(written)
    with pytest.raises(IntegrityError):
        device.downloader.verify(r.Verify(3, DIGEST, size), release="m:1")
    assert not device.store.blobs.has(DIGEST)
    assert not device.store.partial(DIGEST).exists()  # the next attempt fetches them again
    assert device.events() == []


def test_moved_on_says_once_whether_the_cut_fetch_wrote_bytes(device: _Device) -> None:
    assert not device.downloader.moved_on()  # no fetch yet
    with pytest.raises(NotFoundError):
        device.downloader.fetch(r.Fetch(3, DIGEST, len(BLOB), sources=()), release="m:1")
    assert not device.downloader.moved_on()  # nothing written
    with pytest.raises(NotFoundError):
        device.downloader.fetch(r.Fetch(3, DIGEST, len(BLOB), sources=()), release="m:1")
    device.store.partial(DIGEST).write_bytes(BLOB[:4])  # what a cut stream left
    assert device.downloader.moved_on()
    assert not device.downloader.moved_on()  # asked once per failure


def test_journal_reports_each_turn_before_the_state_it_commits(device: _Device) -> None:
    device.journal.resume(DeviceState(generation_applied=2))
    desired_raw = b"signed desired state"
    manifest = t.Manifest(
        name="m", version="1", model_digest=DIGEST, model_size=len(BLOB), inputs=(), outputs=()
    )
    desired = t.DesiredState(
        device_id="dev-1",
        fleet="f",
        generation=3,
        release=manifest.ref,
        manifest_digest="sha256:" + "9" * 64,
        manifest=manifest,
    )
    device.journal.begun(r.Begin(3, "m:1", "g3"), desired, desired_raw)
    on_disk = device.state_file.load()
    assert on_disk.install is not None and on_disk.install.phase is InstallPhase.FETCHING
    assert (on_disk.install.desired, on_disk.target_release) == (desired_raw, "m:1")

    device.journal.enter(InstallPhase.VERIFYING)
    device.journal.enter(InstallPhase.VERIFYING)  # there already: nothing reported or written
    assert device.state_file.load().install.phase is InstallPhase.VERIFYING  # type: ignore[union-attr]

    install = device.journal.state.install
    assert install is not None
    device.journal.retrying(install, OSError("cut"), attempts=1, delay=2.0)
    on_disk = device.state_file.load()
    assert on_disk.install is not None and on_disk.install.attempts == 1
    assert on_disk.last_error == "cut"

    device.journal.failed(3, "m:1", "IntegrityError: bad bytes")
    on_disk = device.state_file.load()
    assert (on_disk.generation_applied, on_disk.phase, on_disk.install) == (
        3,
        InstallPhase.FAILED,
        None,
    )
    assert on_disk == device.journal.state
    kinds = [(e.kind, e.generation) for e in device.events()]
    assert kinds == [
        ("install_started", 3),
        ("fetched", 3),
        ("install_retry", 3),
        ("install_failed", 3),
    ]
