"""Downloading one blob into its partial file, trying each source in order.

``artifacts.fetch`` appends from the partial file's size, so every attempt (a crash, a cut
stream, the next source) resumes where the bytes on disk end; so does ``oci.fetch`` for
an ``oci://HOST[:PORT]/REPO`` source (an OCI registry, ``Range`` requests).

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
from edgefleet.common import artifacts, digests, oci, rpc
from edgefleet.common.errors import FetchError, IntegrityError, NotFoundError, PermanentError

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
) -> None:
    """Fill ``partial`` with the ``size`` bytes of ``digest``; ``on_bytes(n)`` per chunk.

    ``tls()``: how gRPC sources are reached (an enrolled device: mTLS with its identity, read
    at each attempt so a renewed certificate is used at once; None: plaintext)."""
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
            # an ``oci://`` source is a registry (GET .../blobs/<digest> with Range); any other
            # is an ArtifactService address (the controller's, a neighbour's)
            if oci.is_source(source):
                oci.fetch(
                    source, digest, partial, size=size, deadline_s=deadline_s, on_chunk=on_chunk
                )
            else:
                artifacts.fetch(
                    source,
                    digest,
                    partial,
                    size=size,
                    deadline_s=deadline_s,
                    on_chunk=on_chunk,
                    stall_s=stall_s,
                    tls=tls(),
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
