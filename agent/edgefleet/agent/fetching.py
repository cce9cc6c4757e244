"""Downloading one blob into its partial file, trying each source in order.

``artifacts.fetch`` appends from the partial file's size, so every attempt (a crash, a cut
stream, the next source) resumes where the bytes on disk end; so does ``oci.fetch`` for
an ``oci://HOST[:PORT]/REPO`` source (an OCI registry, ``Range`` requests). A
``peer://DEVICE@HOST:PORT`` source (``edgefleet.common.peers``) is a device of the fleet that
holds the blob: reached over mTLS with this device's identity, its certificate checked for
``DEVICE``, and its bytes checked like anyone's (a peer that lies is skipped, never trusted).

Nothing a source says is taken on trust: the download is hard-capped at the signed size (a
source that claims another size or streams past it is cut off before the excess is written),
and the finished file's sha256 is checked against the signed digest before the next step sees
it. A source that fails either way has its bytes discarded and the next source is tried; a
resumed download that fails is first fetched again whole from the same source, since the
earlier bytes may have come from another one. Before each attempt the free space of the
partial's file system must hold what is left to fetch.

What a failure means: every source lacks the blob -> ``NotFoundError`` (permanent); every
source served bad bytes (or lacked the blob) -> ``IntegrityError`` (permanent); a blob larger
than the whole disk -> ``PermanentError``; anything else, not enough free space included ->
``FetchError`` (transient: retry later).
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from edgefleet.agent import failpoints
from edgefleet.agent.errors import StopRequestedError
from edgefleet.common import artifacts, digests, oci, peers, rpc
from edgefleet.common.errors import (
    FetchError,
    IntegrityError,
    InvalidInputError,
    NotFoundError,
    PermanentError,
)

log = logging.getLogger(__name__)


def check_space(directory: Path, *, digest: str, needed: int, size: int) -> None:
    """Raise unless ``directory``'s file system has ``needed`` bytes free (of a ``size`` blob)."""
    usage = shutil.disk_usage(directory)
    if size > usage.total:
        raise PermanentError(
            f"cannot fetch {digest}: its {size} bytes are more than the whole file system of "
            f"{directory} holds ({usage.total} bytes)"
        )
    if needed > usage.free:
        raise FetchError(
            digest,
            f"not enough free space in {directory}: {needed} bytes needed, {usage.free} free",
        )


def download(
    sources: Sequence[str],
    digest: str,
    partial: Path,
    *,
    size: int,
    deadline_s: float,
    stopping: threading.Event,
    on_bytes: Callable[[int], None],
    stall_s: float | None = None,
    tls: Callable[[], rpc.ClientTls | None] = lambda: None,
    peer_tls: Callable[[str], rpc.ClientTls | None] = lambda _d: None,
) -> None:
    """Fill ``partial`` with the ``size`` bytes of ``digest``; ``on_bytes(n)`` per chunk.

    ``tls()``: how gRPC sources are reached (an enrolled device: mTLS with its identity, read
    at each attempt so a renewed certificate is used at once; None: plaintext).
    ``peer_tls(device_id)``: mTLS to that peer (None: this device cannot reach peers)."""
    partial.parent.mkdir(parents=True, exist_ok=True)
    done_before = 0

    def on_chunk(done: int, total: int) -> None:
        nonlocal done_before
        if total != size:
            raise IntegrityError(digest, f"a blob of {total} bytes where the manifest says {size}")
        on_bytes(max(0, done - done_before))
        done_before = done
        failpoints.hit("fetch_chunk")
        if stopping.is_set():
            raise StopRequestedError()

    problems: list[str] = []
    missing = bad = 0
    queue = list(sources)
    again: set[str] = set()  # sources already retried whole after a failed resume
    while queue:
        source = queue.pop(0)
        done_before = resumed_at = partial.stat().st_size if partial.exists() else 0
        check_space(partial.parent, digest=digest, needed=size - resumed_at, size=size)
        try:
            _fetch_one(
                source,
                digest,
                partial,
                size=size,
                deadline_s=deadline_s,
                on_chunk=on_chunk,
                stall_s=stall_s,
                tls=tls,
                peer_tls=peer_tls,
            )
            digests.verify_file(partial, digest)
        except FetchError as exc:
            log.warning("fetch from %s failed: %s", source, exc.reason)
            problems.append(f"{source}: {exc.reason}")
        except NotFoundError:
            missing += 1
            problems.append(f"{source}: not found")
        except IntegrityError as exc:
            partial.unlink(missing_ok=True)
            if resumed_at and source not in again:
                # the bytes before the resume point may be another source's: fetch it whole
                log.warning("%s: %s after resuming; fetching it whole from there", source, exc)
                again.add(source)
                queue.insert(0, source)
                continue
            log.warning("%s served bad bytes (%s); trying the next source", source, exc)
            bad += 1
            problems.append(f"{source}: {exc}")
        else:
            failpoints.hit("after_fetch")
            return
    if missing == len(sources):
        raise NotFoundError("blob", f"{digest} (at none of {', '.join(sources)})")
    if bad and bad + missing == len(sources):
        raise IntegrityError(digest, f"no source served the signed bytes: {'; '.join(problems)}")
    raise FetchError(digest, "; ".join(problems))


def _fetch_one(
    source: str,
    digest: str,
    partial: Path,
    *,
    size: int,
    deadline_s: float,
    on_chunk: Callable[[int, int], None],
    stall_s: float | None,
    tls: Callable[[], rpc.ClientTls | None],
    peer_tls: Callable[[str], rpc.ClientTls | None],
) -> None:
    """One attempt at one source: an ``oci://`` registry (GET .../blobs/<digest> with Range),
    a ``peer://`` device (mTLS with this device's identity, the peer's certificate checked for
    its device id; ``FetchError`` when this device has none: peers serve mTLS only), or any
    other ArtifactService address (the controller's)."""
    if oci.is_source(source):
        oci.fetch(source, digest, partial, size=size, deadline_s=deadline_s, on_chunk=on_chunk)
        return
    target, channel_tls = source, None
    if peers.is_source(source):
        try:
            device_id, target = peers.parse(source)
        except InvalidInputError as exc:
            raise FetchError(digest, str(exc)) from None
        channel_tls = peer_tls(device_id)
        if channel_tls is None:
            raise FetchError(digest, "peers serve mTLS only and this device has no identity")
    else:
        channel_tls = tls()
    artifacts.fetch(
        target,
        digest,
        partial,
        size=size,
        deadline_s=deadline_s,
        on_chunk=on_chunk,
        stall_s=stall_s,
        tls=channel_tls,
    )
