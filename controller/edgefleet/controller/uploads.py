"""Data uploaded ahead of the call that uses it (``UploadData``): eval data past one message.

A ``CompressModel`` request is one gRPC message, bounded by the API's message size; eval data
larger than that comes first in chunks over ``UploadData`` (bounded by ``max_bytes``, the
limit named in the refusal), is kept here in memory under a random id, and the request names
the id. At most ``keep`` uploads are kept, each for ``ttl_s``; the oldest go first. Not
persisted: a restarted controller asks for the upload again (``NotFoundError``).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from edgefleet.common.errors import InvalidInputError, NotFoundError


class DataUploads:
    def __init__(
        self,
        *,
        max_bytes: int,
        keep: int = 4,
        ttl_s: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_bytes = max_bytes
        self._keep = keep
        self._ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def collect(self, chunks: Iterable[bytes], *, declared: int = 0) -> bytes:
        """Join the chunks, refusing more than ``max_bytes`` as soon as it is passed."""
        limit = self.max_bytes
        if declared > limit:
            raise InvalidInputError(
                f"data of {declared} bytes is larger than the controller's limit of {limit} "
                "bytes (registry.max_eval_bytes)"
            )
        data = bytearray()
        for chunk in chunks:
            data += chunk
            if len(data) > limit:
                raise InvalidInputError(
                    f"data is larger than the controller's limit of {limit} bytes "
                    "(registry.max_eval_bytes)"
                )
        if declared and len(data) != declared:
            raise InvalidInputError(f"upload ended after {len(data)} of {declared} bytes")
        if not data:
            raise InvalidInputError("empty upload: no bytes after the header")
        return bytes(data)

    def put(self, data: bytes) -> str:
        """Keep ``data``; its id."""
        data_id = secrets.token_hex(16)
        with self._lock:
            self._expire()
            self._data[data_id] = (self._clock(), data)
            while len(self._data) > self._keep:
                self._data.popitem(last=False)
        return data_id

    def get(self, data_id: str) -> bytes:
        with self._lock:
            self._expire()
            kept = self._data.get(data_id)
        if kept is None:
            raise NotFoundError("uploaded data", data_id)
        return kept[1]

    def _expire(self) -> None:
        now = self._clock()
        for data_id in [k for k, (at, _) in self._data.items() if now - at > self._ttl_s]:
            del self._data[data_id]
