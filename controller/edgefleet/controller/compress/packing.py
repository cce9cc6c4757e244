"""Moved to ``edgefleet.common.packing`` (the agent decodes with it); re-exported here."""

from edgefleet.common.packing import (
    ENCODING,
    MAGIC,
    MAX_CODE_LENGTH,
    MAX_SYMBOLS,
    VERSION,
    PackingError,
    decode,
    decoded_sha256,
    encode,
    is_packed,
)

__all__ = [
    "ENCODING",
    "MAGIC",
    "MAX_CODE_LENGTH",
    "MAX_SYMBOLS",
    "VERSION",
    "PackingError",
    "decode",
    "decoded_sha256",
    "encode",
    "is_packed",
]
