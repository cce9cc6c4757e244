"""``DataUploads``: the bound on one upload (named in the refusal), the oldest forgotten first,
an hour's keep (a fake clock)."""

from __future__ import annotations

import pytest

from edgefleet.common.errors import InvalidInputError, NotFoundError
from edgefleet.controller.uploads import DataUploads


def test_an_upload_over_the_limit_is_refused_with_the_limit() -> None:
    uploads = DataUploads(max_bytes=10)
    assert uploads.collect([b"12345", b"67890"]) == b"1234567890"
    with pytest.raises(InvalidInputError, match="limit of 10 bytes"):
        uploads.collect([b"123456", b"789012"])
    with pytest.raises(InvalidInputError, match="limit of 10 bytes"):
        uploads.collect([], declared=11)
    with pytest.raises(InvalidInputError, match="ended after 3 of 5"):
        uploads.collect([b"abc"], declared=5)
    with pytest.raises(InvalidInputError, match="empty"):
        uploads.collect([])


def test_the_oldest_uploads_and_the_expired_ones_are_forgotten() -> None:
    now = [0.0]
    uploads = DataUploads(max_bytes=10, keep=2, ttl_s=60, clock=lambda: now[0])
    first, second = uploads.put(b"a"), uploads.put(b"b")
    third = uploads.put(b"c")
    with pytest.raises(NotFoundError):
        uploads.get(first)
    assert (uploads.get(second), uploads.get(third)) == (b"b", b"c")
    now[0] = 61.0
    with pytest.raises(NotFoundError, match="uploaded data"):
        uploads.get(third)
