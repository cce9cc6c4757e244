"""Delta downloads: a chunked model is assembled from the chunks this device already holds and
fetches only the others.

A release's signed manifest may list its model blob as content-defined chunks
(``Manifest.model_chunks``). The chunks this device holds are those of the releases in its slots
on disk: each slot keeps its signed manifest and its model blob, so a chunk's bytes are found at
its offset in that blob. Nothing found there is trusted: a held chunk is used only when its bytes
hash to the digest the new manifest signs, and a fetched chunk is verified by
``fetching.download`` like any blob. The assembled model is then verified whole against
``model_digest`` (the installer's Verify step) before anything loads it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgefleet.agent import store as device_store
from edgefleet.agent.store import SlotStore
from edgefleet.common import chunking, digests, wire
from edgefleet.common import types as t
from edgefleet.common.errors import EdgeFleetError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Held:
    """Where a chunk this device holds lies: a file and the chunk's offset in it."""

    path: Path
    offset: int
    size: int


@dataclass
class DeltaStats:
    """How a chunked model was assembled: chunks (and bytes) reused and fetched."""

    reused: int = 0
    reused_bytes: int = 0
    fetched: int = 0
    fetched_bytes: int = 0


def usable_chunks(manifest: t.Manifest) -> tuple[t.Chunk, ...]:
    """The manifest's model chunks when they describe the model this device fetches (the
    release's default model; a variant's blob is fetched whole); empty otherwise."""
    if manifest.variant or manifest.runtime != "onnxruntime":
        return ()
    if sum(c.size for c in manifest.model_chunks) != manifest.model_size:
        return ()
    return manifest.model_chunks


def held_chunks(store: SlotStore) -> dict[str, Held]:
    """The chunks of the model blobs in this device's slots, by digest (unverified: a user of
    one checks its bytes against the digest it wants)."""
    held: dict[str, Held] = {}
    for slot in store.slot_names():
        d = store.slot_dir(slot)
        try:
            env = wire.decode_envelope((d / device_store.MANIFEST_FILE).read_bytes())
            manifest = wire.decode_manifest(env.payload)
        except (OSError, EdgeFleetError):
            continue
        blob = d / (
            device_store.PACKED_FILE if manifest.model_encoding else device_store.MODEL_FILE
        )
        try:
            if blob.stat().st_size != manifest.model_size:
                continue  # the slot holds another model (a variant's)
        except OSError:
            continue
        for chunk, start in zip(
            manifest.model_chunks, chunking.offsets(manifest.model_chunks), strict=True
        ):
            held.setdefault(chunk.digest, Held(blob, start, chunk.size))
    return held


def read_held(held: Held, chunk: t.Chunk) -> bytes | None:
    """``chunk``'s bytes from where this device holds them, or None when they are not there
    (or not what the digest says: a changed or damaged file)."""
    try:
        with held.path.open("rb") as f:
            f.seek(held.offset)
            data = f.read(chunk.size)
    except OSError:
        return None
    if len(data) != chunk.size or digests.of_bytes(data) != chunk.digest:
        return None
    return data


def resume_point(chunks: tuple[t.Chunk, ...], partial: Path) -> int:
    """How many leading chunks ``partial`` already holds whole; it is cut back to their end."""
    have = partial.stat().st_size if partial.exists() else 0
    count, end = 0, 0
    for c in chunks:
        if end + c.size > have:
            break
        end += c.size
        count += 1
    if have != end:
        with partial.open("r+b") as f:
            f.truncate(end)
    return count


def assemble(
    chunks: tuple[t.Chunk, ...],
    partial: Path,
    *,
    held: dict[str, Held],
    fetch: Callable[[t.Chunk], bytes],
) -> DeltaStats:
    """Write the model blob ``chunks`` make up into ``partial``: each chunk from ``held`` when
    its bytes are there and hash right, else ``fetch(chunk)`` (which returns verified bytes).
    Resumes after the whole chunks ``partial`` already has."""
    partial.parent.mkdir(parents=True, exist_ok=True)
    first = resume_point(chunks, partial)
    stats = DeltaStats()
    with partial.open("ab") as out:
        for chunk in chunks[first:]:
            place = held.get(chunk.digest)
            data = read_held(place, chunk) if place is not None else None
            if data is not None:
                stats.reused += 1
                stats.reused_bytes += chunk.size
            else:
                data = fetch(chunk)
                stats.fetched += 1
                stats.fetched_bytes += chunk.size
            out.write(data)
            out.flush()
    log.info(
        "model assembled from %d held chunks (%d bytes) and %d fetched (%d bytes)",
        stats.reused,
        stats.reused_bytes,
        stats.fetched,
        stats.fetched_bytes,
    )
    return stats
