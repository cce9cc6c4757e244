"""Content addresses: ``sha256:<64 hex>`` over the exact bytes."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from edgefleet.common.errors import IntegrityError, InvalidInputError

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_CHUNK = 1 << 20


def of_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def of_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def validate(digest: str) -> str:
    """Return ``digest`` when well formed; a digest is also a file name, so this guards paths."""
    if not _DIGEST.match(digest):
        raise InvalidInputError(f"not a sha256 digest: {digest!r}")
    return digest


def verify_file(path: Path, digest: str) -> None:
    actual = of_file(path)
    if actual != digest:
        raise IntegrityError(digest, actual)


def hex_part(digest: str) -> str:
    return validate(digest).removeprefix("sha256:")
