"""The model registry: ONNX files by name, versioned 1, 2, 3, ... per name.

Bytes go to the content-addressed ``BlobStore``; the database holds the metadata (digest, size,
signature, opset). Uploading the same bytes as the newest version returns that version instead
of making a new one, so a retried upload is harmless.
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
from edgefleet.controller.records import ModelVersion

log = logging.getLogger(__name__)


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
    def __init__(self, db: Database, blobs: BlobStore, *, clock: Callable[[], int]) -> None:
        self._db = db
        self._blobs = blobs
        self._clock = clock

    def register(self, upload: Upload, data: bytes) -> ModelVersion:
        name = t.validate_name("model", upload.name)
        info = onnxspec.inspect(data)
        digest = self._blobs.put(data)
        for _attempt in range(3):
            try:
                with self._db.write() as session:
                    latest = session.scalars(
                        select(ModelRow)
                        .where(ModelRow.name == name)
                        .order_by(ModelRow.version.desc())
                    ).first()
                    if latest is not None and latest.digest == digest:
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
                        description=upload.description,
                        created_at_ms=self._clock(),
                    )
                    session.add(row)
            except IntegrityError:
                # Another upload of the same name took this version number first (PostgreSQL).
                continue
            log.info("registered model %s version %d (%s)", name, row.version, digest)
            return _record(row)
        raise TransientError(f"model {name}: too many concurrent uploads, try again")

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
    )
