"""What the agent keeps on disk besides its state: blobs, partial downloads, install slots.

Layout under the data dir::

    blobs/sha256/<hex>           verified model blobs (``BlobStore``)
    partial/<hex>.part           downloads under way; resumed from their size
    slots/<slot>/model.onnx      an installed release (a hard link to its blob when possible)
    slots/<slot>/model.efpk      the packed blob of a release with ``model_encoding == "efpk"``
                                 (a link); ``model.onnx`` is then what it decodes to
    slots/<slot>/golden.npz      its golden data, when the manifest names some (also a link)
    slots/<slot>/manifest.signed its signed manifest (protobuf ``Signed``), re-verified on start
    slots/<slot>/desired.signed  the signed desired state that installed it: proves the slot's
                                 generation when ``state.json`` is lost (``restoring.rebuild``)

A slot is staged in a temporary dir and renamed into place, so ``slots/<slot>`` is either
absent or complete. Only the active and the previous slot (and the install under way) are kept.

Packed models: the signed manifest's digest is the packed blob's, so re-verification checks
``model.efpk`` against it, then ``model.onnx`` against the sha256 the container records for
its decoded model (read from the container's header: no second decode at start-up, and nothing
unsigned in ``state.json``).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Collection
from pathlib import Path

from edgefleet.agent import variants
from edgefleet.agent.errors import ModelDecodeError, SlotError
from edgefleet.common import digests, packing, wire
from edgefleet.common import types as t
from edgefleet.common.artifacts import BlobStore, atomic_write, fsync_dir
from edgefleet.common.desired import open_manifest
from edgefleet.common.errors import InvalidInputError
from edgefleet.common.signing import TrustStore
from edgefleet.v1 import mqtt_pb2

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
PACKED_FILE = "model.efpk"
SUPPORTED_ENCODINGS = frozenset({"", packing.ENCODING})
GOLDEN_FILE = "golden.npz"
MANIFEST_FILE = "manifest.signed"
DESIRED_FILE = "desired.signed"
_SLOT = re.compile(r"^g[0-9]{1,20}$")


def signed_manifest_of(desired: bytes) -> bytes:
    """The signed manifest envelope inside a signed desired state (already verified)."""
    env = wire.decode_envelope(desired)
    msg = wire.parse(mqtt_pb2.DesiredState, env.payload, what="desired state")
    return msg.manifest.SerializeToString(deterministic=True)


class SlotStore:
    """The agent's model files under ``root``: verified blobs, partial downloads, and the slots
    (``slots/g<generation>``: a model, its golden data, the signed manifest and desired state)
    that activation and rollback switch between."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = BlobStore(root / "blobs")
        self._partials = root / "partial"
        self._slots = root / "slots"
        self._partials.mkdir(parents=True, exist_ok=True)
        self._slots.mkdir(parents=True, exist_ok=True)

    # downloads

    def partial(self, digest: str) -> Path:
        return self._partials / f"{digests.hex_part(digest)}.part"

    def partial_size(self, digest: str) -> int:
        try:
            return self.partial(digest).stat().st_size
        except FileNotFoundError:
            return 0

    # slots

    def slot_dir(self, slot: str) -> Path:
        if not _SLOT.match(slot):
            raise InvalidInputError(f"not a slot name: {slot!r}")
        return self._slots / slot

    def model_path(self, slot: str) -> Path:
        return self.slot_dir(slot) / MODEL_FILE

    def golden_path(self, slot: str) -> Path:
        return self.slot_dir(slot) / GOLDEN_FILE

    def slot_ready(self, slot: str) -> bool:
        d = self.slot_dir(slot)
        return (d / MODEL_FILE).is_file() and (d / MANIFEST_FILE).is_file()

    def stage(
        self,
        slot: str,
        *,
        digest: str,
        signed_manifest: bytes,
        golden_digest: str = "",
        encoding: str = "",
        decoded_digest: str = "",
        signed_desired: bytes = b"",
    ) -> Path:
        """Make ``slots/<slot>`` afresh from the stored blobs ``digest`` (and ``golden_digest``).

        With ``encoding == "efpk"`` the model blob is decoded into ``model.onnx`` (and must
        decode to ``decoded_digest`` when one is given); ``ModelDecodeError`` when it does not.
        """
        if encoding not in SUPPORTED_ENCODINGS:
            raise ModelDecodeError(f"unsupported model encoding {encoding!r}")
        final = self.slot_dir(slot)
        tmp = self._slots / f".{slot}.staging"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        model_file = PACKED_FILE if encoding else MODEL_FILE
        for blob_digest, name in ((digest, model_file), (golden_digest, GOLDEN_FILE)):
            if not blob_digest:
                continue
            blob = self.blobs.path(blob_digest)
            try:
                os.link(blob, tmp / name)
            except OSError:
                shutil.copyfile(blob, tmp / name)
        if encoding:
            try:
                _unpack(tmp / PACKED_FILE, tmp / MODEL_FILE, decoded_digest)
            except ModelDecodeError:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        atomic_write(tmp / MANIFEST_FILE, signed_manifest)
        if signed_desired:
            atomic_write(tmp / DESIRED_FILE, signed_desired)
        fsync_dir(tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        fsync_dir(self._slots)
        return final

    def slot_names(self) -> list[str]:
        """The complete slots on disk, newest generation first."""
        names = [d.name for d in self._slots.iterdir() if _SLOT.match(d.name) and d.is_dir()]
        return sorted(names, key=lambda n: int(n[1:]), reverse=True)

    def slot_desired(self, slot: str) -> bytes | None:
        """The signed desired state kept with a slot (None for slots staged before it was)."""
        try:
            return (self.slot_dir(slot) / DESIRED_FILE).read_bytes()
        except FileNotFoundError:
            return None

    def open_slot(self, slot: str, trust: TrustStore) -> tuple[t.Manifest, str]:
        """Verify a slot's signed manifest, its model's and golden data's digests; return
        (manifest, manifest digest).

        Raises ``SignatureError``, ``IntegrityError``, ``MalformedMessageError``, or
        ``SlotError`` when a file is missing.
        """
        d = self.slot_dir(slot)
        try:
            env = wire.decode_envelope((d / MANIFEST_FILE).read_bytes())
        except FileNotFoundError:
            raise SlotError(f"slot {slot} has no signed manifest") from None
        manifest, manifest_digest = open_manifest(env, trust)
        manifest = variants.resolve(manifest)  # the model this device runs of the release
        model = d / MODEL_FILE
        if not model.is_file():
            raise SlotError(f"slot {slot} has no model file")
        if manifest.model_encoding:
            packed = d / PACKED_FILE
            if not packed.is_file():
                raise SlotError(f"slot {slot} has no packed model file")
            digests.verify_file(packed, manifest.model_digest)
            try:
                decoded = "sha256:" + packing.decoded_sha256(packed.read_bytes())
            except packing.PackingError as exc:
                raise ModelDecodeError(f"slot {slot}: {exc}") from exc
            digests.verify_file(model, decoded)
        else:
            digests.verify_file(model, manifest.model_digest)
        if manifest.golden_digest:
            golden = d / GOLDEN_FILE
            if not golden.is_file():
                raise SlotError(f"slot {slot} has no golden data")
            digests.verify_file(golden, manifest.golden_digest)
        return manifest, manifest_digest

    def prune(
        self, *, slots: Collection[str], blobs: Collection[str], partials: Collection[str]
    ) -> None:
        """Delete every slot, blob and partial download not named in the ``keep`` sets."""
        keep_slots = set(slots)
        for d in self._slots.iterdir():
            if d.name not in keep_slots:
                log.info("removing old slot %s", d.name)
                shutil.rmtree(d, ignore_errors=True)
        keep_blobs = {digests.hex_part(b) for b in blobs}
        for f in (self.blobs.root / "sha256").iterdir():
            if f.name not in keep_blobs:
                f.unlink(missing_ok=True)
        keep_partials = {f"{digests.hex_part(p)}.part" for p in partials}
        for f in self._partials.iterdir():
            if f.name not in keep_partials:
                f.unlink(missing_ok=True)

    def drop_partial(self, digest: str) -> None:
        self.partial(digest).unlink(missing_ok=True)


def _unpack(packed: Path, model: Path, decoded_digest: str) -> None:
    """Decode the packed blob at ``packed`` into ``model`` (checked against ``decoded_digest``)."""
    try:
        data = packing.decode(packed.read_bytes())
    except packing.PackingError as exc:
        raise ModelDecodeError(f"cannot unpack the model: {exc}") from exc
    actual = digests.of_bytes(data)
    if decoded_digest and actual != decoded_digest:
        raise ModelDecodeError(
            f"the packed model decodes to {actual}, the manifest says {decoded_digest}"
        )
    atomic_write(model, data)
