"""The Fetch and Verify steps of an install: a blob's bytes into the blob store, checked.

``Downloader.fetch`` writes a blob into its partial file (``SlotStore.partial``), either whole
through ``fetching.download`` (which resumes from the bytes on disk) or, when the signed
manifest lists chunks, assembled from the chunks this device already holds and the ones it
fetches (``deltas``, each chunk checked against its digest). ``Downloader.verify`` then checks
the whole file against the signed size and digest and adopts it into the blob store; bytes that
fail are dropped, so the next attempt fetches them again.

Called by ``installing.Installer`` on the worker thread, one step at a time; what the step
raises (``TransientError``, ``PermanentError``, ``StopRequestedError``) is the installer's to
handle. Nothing here touches the device state.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from edgefleet.agent import deltas, failpoints, fetching
from edgefleet.agent import reconcile as r
from edgefleet.agent.metrics import AgentMetrics
from edgefleet.agent.reporting import Reporter
from edgefleet.agent.store import SlotStore
from edgefleet.common import digests, rpc
from edgefleet.common import types as t
from edgefleet.common.errors import FetchError, IntegrityError
from edgefleet.common.types import InstallPhase


class Downloader:
    def __init__(
        self,
        *,
        store: SlotStore,
        reporter: Reporter,
        metrics: AgentMetrics,
        stopping: threading.Event,
        deadline_s: float,
        stall_s: float | None = None,
        tls: Callable[[], rpc.ClientTls | None] = lambda: None,
        peer_tls: Callable[[str], rpc.ClientTls | None] = lambda _d: None,
    ) -> None:
        """``deadline_s``/``stall_s``/``stopping``: as ``fetching.download`` takes them;
        ``tls()``: how blob sources over gRPC are reached; ``peer_tls(device_id)``: how a
        ``peer://`` source is (mTLS to that device)."""
        self._store = store
        self._reporter = reporter
        self._metrics = metrics
        self._stopping = stopping
        self._deadline_s = deadline_s
        self._stall_s = stall_s
        self._tls = tls
        self._peer_tls = peer_tls
        self._began_at: tuple[str, int] | None = None  # (digest, bytes) the last fetch began at

    def fetch(self, action: r.Fetch, *, release: str, chunks: tuple[t.Chunk, ...] = ()) -> None:
        """Fetch the blob of ``action`` into its partial file; ``chunks``: its signed chunk
        list when it may be assembled from chunks (empty: fetch it whole)."""
        partial = self._store.partial(action.digest)
        self._began_at = (action.digest, self._store.partial_size(action.digest))
        if action.offset:
            self._reporter.event(
                "fetch_resumed",
                f"resuming {action.digest} at byte {action.offset} of {action.size}",
                release=release,
                generation=action.generation,
                phase=InstallPhase.FETCHING,
            )
        if chunks:
            self._fetch_chunks(action, chunks, partial, release=release)
            return
        self._download(action.sources, action.digest, partial, size=action.size)

    def moved_on(self) -> bool:
        """Whether the last fetch wrote bytes before it was cut (asked once per failure: it
        forgets the fetch)."""
        at, self._began_at = self._began_at, None
        return at is not None and self._store.partial_size(at[0]) > at[1]

    def verify(self, action: r.Verify, *, release: str) -> None:
        """Check the fetched blob against the signed size and digest, then adopt it into the
        blob store; bytes that fail are dropped."""
        partial = self._store.partial(action.digest)
        size = self._store.partial_size(action.digest)
        if not partial.exists():
            raise FetchError(action.digest, "the download vanished before it was verified")
        try:
            if size != action.size:
                raise IntegrityError(
                    action.digest, f"{size} bytes where the manifest says {action.size}"
                )
            digests.verify_file(partial, action.digest)
        except IntegrityError:
            self._store.drop_partial(action.digest)
            raise
        self._store.blobs.adopt(partial, action.digest)
        failpoints.hit("after_verify")
        self._reporter.event(
            "verified",
            f"{action.digest}, {action.size} bytes",
            release=release,
            generation=action.generation,
            phase=InstallPhase.VERIFYING,
        )

    def _download(self, sources: Sequence[str], digest: str, partial: Path, *, size: int) -> None:
        """``fetching.download`` of the blob ``digest`` into ``partial`` under this
        downloader's deadlines, stop event, byte counter and TLS."""
        fetching.download(
            sources,
            digest,
            partial,
            size=size,
            deadline_s=self._deadline_s,
            stall_s=self._stall_s,
            stopping=self._stopping,
            on_bytes=self._metrics.download_bytes.inc,
            tls=self._tls,
            peer_tls=self._peer_tls,
        )

    def _fetch_chunks(
        self, action: r.Fetch, chunks: tuple[t.Chunk, ...], partial: Path, *, release: str
    ) -> None:
        """Assemble the model blob from held chunks and fetched ones (each verified); the
        Verify step then checks the whole against the model digest."""

        def fetch(chunk: t.Chunk) -> bytes:
            part = self._store.partial(chunk.digest)
            self._download(action.sources, chunk.digest, part, size=chunk.size)
            data = part.read_bytes()
            part.unlink(missing_ok=True)
            return data

        stats = deltas.assemble(chunks, partial, held=deltas.held_chunks(self._store), fetch=fetch)
        self._reporter.event(
            "delta_fetched",
            f"{stats.fetched} of {len(chunks)} chunks fetched ({stats.fetched_bytes} bytes), "
            f"{stats.reused} held ({stats.reused_bytes} bytes)",
            release=release,
            generation=action.generation,
            phase=InstallPhase.FETCHING,
        )
