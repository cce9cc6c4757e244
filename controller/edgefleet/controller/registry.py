"""The model registry: ONNX files by name, versioned 1, 2, 3, ... per name.

Bytes go to the content-addressed ``BlobStore``; the database holds the metadata (digest, size,
signature, opset). Uploading the same bytes as the newest version returns that version instead
of making a new one, so a retried upload is harmless.

A compressed version (``register_compressed``) names its parent version and carries the
search's report, golden data and packed transfer container as blobs; ``compression_artifacts``
hands them to a release.

Every model is inspected in a sandbox process (``sandbox``): a model that keeps tensors in
external files is refused there, and one that crashes or hangs the inspection fails its upload
only. The registry's ``sandbox`` is the one golden outputs and compression use too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from edgefleet.common import types as t
from edgefleet.common.artifacts import BlobStore
from edgefleet.common.errors import InvalidInputError, NotFoundError, TransientError
from edgefleet.controller import onnxspec
from edgefleet.controller.db import Database, ModelRow
from edgefleet.controller.sandbox import Sandbox

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    digest: str
    size: int
    inputs: tuple[t.TensorSpec, ...]
    outputs: tuple[t.TensorSpec, ...]
    opset: int
    created_at_ms: int
    description: str = ""
    parent_version: int = 0  # the version this one was compressed from; 0 = none
    report_json_digest: str = ""  # blobs of a compressed version; "" = none
    report_markdown_digest: str = ""
    golden_digest: str = ""
    transfer_digest: str = ""  # the packed container a device downloads; "" = the model itself
    transfer_size: int = 0

    @property
    def compressed(self) -> bool:
        return bool(self.report_json_digest)


@dataclass(frozen=True)
class CompressionArtifacts:
    """What a release of a compressed model version carries besides the model's manifest data.

    ``transfer`` is what devices download in place of the model (the packed container, encoding
    ``efpk``), or None when they download the model itself.
    """

    report_json: str
    golden_npz: bytes | None
    transfer: bytes | None
    transfer_digest: str = ""
    golden_digest: str = ""

    @property
    def model_encoding(self) -> str:
        return "efpk" if self.transfer is not None else ""


@dataclass(frozen=True)
class Upload:
    """The header of an upload: what the first message of the stream says."""

    name: str
    declared_size: int = 0  # 0 = not declared
    description: str = ""


def collect(upload: Upload, chunks: Iterable[bytes], *, max_bytes: int) -> bytes:
    """Join the chunks, refusing more than ``max_bytes`` as soon as it is passed."""
    if upload.declared_size > max_bytes:
        raise InvalidInputError(
            f"model of {upload.declared_size} bytes is larger than the limit of {max_bytes}"
        )
    data = bytearray()
    for chunk in chunks:
        data += chunk
        if len(data) > max_bytes:
            raise InvalidInputError(f"model is larger than the limit of {max_bytes} bytes")
    if upload.declared_size and len(data) != upload.declared_size:
        raise InvalidInputError(
            f"upload ended after {len(data)} bytes of the {upload.declared_size} declared"
        )
    if not data:
        raise InvalidInputError("empty upload: no model bytes after the header")
    return bytes(data)


class Registry:
    def __init__(
        self,
        db: Database,
        blobs: BlobStore,
        *,
        clock: Callable[[], int],
        sandbox: Sandbox | None = None,
    ) -> None:
        self._db = db
        self._blobs = blobs
        self._clock = clock
        self.sandbox = sandbox or Sandbox()

    def register(self, upload: Upload, data: bytes) -> ModelVersion:
        name = t.validate_name("model", upload.name)
        return self._add(name, data, description=upload.description, extra={})

    def register_compressed(
        self,
        parent: ModelVersion,
        data: bytes,
        *,
        report_json: str,
        report_markdown: str,
        golden_npz: bytes | None,
        transfer: bytes | None,
        description: str = "",
    ) -> ModelVersion:
        """Register ``data`` as the next version of ``parent.name``, compressed from ``parent``.

        ``transfer`` is the packed container devices download instead (None: the model itself).
        The blobs are written before the row, so a row never names a missing blob.
        """
        extra: dict[str, Any] = {
            "parent_version": parent.version,
            "report_json_digest": self._blobs.put(report_json.encode()),
            "report_markdown_digest": self._blobs.put(report_markdown.encode()),
            "golden_digest": self._blobs.put(golden_npz) if golden_npz is not None else None,
            "transfer_digest": self._blobs.put(transfer) if transfer is not None else None,
            "transfer_size": len(transfer) if transfer is not None else None,
        }
        return self._add(parent.name, data, description=description, extra=extra)

    def _add(
        self, name: str, data: bytes, *, description: str, extra: dict[str, Any]
    ) -> ModelVersion:
        info = self.sandbox.call(onnxspec.inspect, data, what="model inspection")
        digest = self._blobs.put(data)
        for _attempt in range(3):
            try:
                with self._db.write() as session:
                    latest = session.scalars(
                        select(ModelRow)
                        .where(ModelRow.name == name)
                        .order_by(ModelRow.version.desc())
                    ).first()
                    if (
                        latest is not None
                        and latest.digest == digest
                        and latest.parent_version == extra.get("parent_version")
                        and latest.transfer_digest == extra.get("transfer_digest")
                    ):
                        log.info("model %s: same bytes as version %d", name, latest.version)
                        return _record(latest)
                    row = ModelRow(
                        name=name,
                        version=(latest.version if latest else 0) + 1,
                        digest=digest,
                        size=len(data),
                        inputs=_specs_json(info.inputs),
                        outputs=_specs_json(info.outputs),
                        opset=info.opset,
                        description=description,
                        created_at_ms=self._clock(),
                        **extra,
                    )
                    session.add(row)
            except IntegrityError:
                # Another upload of the same name took this version number first (PostgreSQL).
                continue
            log.info("registered model %s version %d (%s)", name, row.version, digest)
            return _record(row)
        raise TransientError(f"model {name}: too many concurrent uploads, try again")

    def model_bytes(self, model: ModelVersion) -> bytes:
        """The ONNX bytes of a registered version."""
        return self._blobs.read(model.digest)

    def compression_artifacts(self, model: ModelVersion) -> CompressionArtifacts | None:
        """The report, golden data and transfer container of a compressed version; None for a
        version that was not made by ``register_compressed``."""
        if not model.compressed:
            return None
        return CompressionArtifacts(
            report_json=self._blobs.read(model.report_json_digest).decode(),
            golden_npz=self._blobs.read(model.golden_digest) if model.golden_digest else None,
            transfer=self._blobs.read(model.transfer_digest) if model.transfer_digest else None,
            transfer_digest=model.transfer_digest,
            golden_digest=model.golden_digest,
        )

    def report_markdown(self, model: ModelVersion) -> str:
        """The Markdown compression report of a compressed version ("" for any other)."""
        if not model.report_markdown_digest:
            return ""
        return self._blobs.read(model.report_markdown_digest).decode()

    def list_models(self, name: str = "") -> list[ModelVersion]:
        stmt = select(ModelRow).order_by(ModelRow.name, ModelRow.version)
        if name:
            stmt = stmt.where(ModelRow.name == name)
        with self._db.read() as session:
            return [_record(r) for r in session.scalars(stmt)]

    def get(self, name: str, version: int = 0) -> ModelVersion:
        """Version ``version`` of model ``name``; 0 = the newest."""
        with self._db.read() as session:
            if not version:
                version = (
                    session.scalar(select(func.max(ModelRow.version)).where(ModelRow.name == name))
                    or 0
                )
            row = session.scalars(
                select(ModelRow).where(ModelRow.name == name, ModelRow.version == version)
            ).first()
        if row is None:
            raise NotFoundError("model", f"{name} version {version}" if version else name)
        return _record(row)


def _specs_json(specs: Iterable[t.TensorSpec]) -> list[Any]:
    return [{"name": s.name, "dtype": s.dtype, "shape": list(s.shape)} for s in specs]


def _specs(raw: list[Any]) -> tuple[t.TensorSpec, ...]:
    return tuple(
        t.TensorSpec(name=s["name"], dtype=s["dtype"], shape=tuple(s["shape"])) for s in raw
    )


def _record(row: ModelRow) -> ModelVersion:
    return ModelVersion(
        name=row.name,
        version=row.version,
        digest=row.digest,
        size=row.size,
        inputs=_specs(row.inputs),
        outputs=_specs(row.outputs),
        opset=row.opset,
        created_at_ms=row.created_at_ms,
        description=row.description,
        parent_version=row.parent_version or 0,
        report_json_digest=row.report_json_digest or "",
        report_markdown_digest=row.report_markdown_digest or "",
        golden_digest=row.golden_digest or "",
        transfer_digest=row.transfer_digest or "",
        transfer_size=row.transfer_size or 0,
    )
