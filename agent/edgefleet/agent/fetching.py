"""Downloading one blob into its partial file, trying each source in order.

``artifacts.fetch`` appends from the partial file's size, so every attempt (a crash, a cut
stream, the next source) resumes where the bytes on disk end; so does ``oci.fetch`` for
an ``oci://HOST[:PORT]/REPO`` source (an OCI registry, ``Range`` requests). What a failure
means: every source lacks the blob -> ``NotFoundError`` (permanent); a source serves a blob
of the wrong size -> ``IntegrityError`` (permanent, the partial is deleted); anything else ->
``FetchError`` (transient: retry later). Verification of the digest is the next step's job.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from edgefleet.agent import failpoints
from edgefleet.agent.errors import StopRequestedError
from edgefleet.common import artifacts, oci
from edgefleet.common.errors import FetchError, IntegrityError, NotFoundError

log = logging.getLogger(__name__)


def download(
    sources: Sequence[str],
    digest: str,
    partial: Path,
    *,
    size: int,
    deadline_s: float,
    stopping: threading.Event,
    on_bytes: Callable[[int], None],
) -> None:
    """Fill ``partial`` with the ``size`` bytes of ``digest``; ``on_bytes(n)`` per chunk."""
    done_before = partial.stat().st_size if partial.exists() else 0

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
    missing = 0
    for source in sources:
        try:
            # an ``oci://`` source is a registry (GET .../blobs/<digest> with Range); any other
            # is an ArtifactService address (the controller's, a neighbour's)
            fetch = oci.fetch if oci.is_source(source) else artifacts.fetch
            fetch(source, digest, partial, deadline_s=deadline_s, on_chunk=on_chunk)
        except FetchError as exc:
            log.warning("fetch from %s failed: %s", source, exc.reason)
            problems.append(f"{source}: {exc.reason}")
        except NotFoundError:
            missing += 1
            problems.append(f"{source}: not found")
        except IntegrityError:
            partial.unlink(missing_ok=True)
            raise
        else:
            failpoints.hit("after_fetch")
            return
        done_before = partial.stat().st_size if partial.exists() else 0
    if missing == len(sources):
        raise NotFoundError("blob", f"{digest} (at none of {', '.join(sources)})")
    raise FetchError(digest, "; ".join(problems))
