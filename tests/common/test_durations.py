from __future__ import annotations

import pytest

from edgefleet.common.durations import parse_duration
from edgefleet.common.errors import InvalidInputError


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("500ms", 0.5),
        ("2m", 120.0),
        ("1.5h", 5400.0),
        ("7", 7.0),
        ("0", 0.0),
        (" 10 m ", 600.0),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text, what="--bake") == seconds


@pytest.mark.parametrize("text", ["soon", "", "-5s", "5d", "1e3", "5 s s"])
def test_anything_else_is_refused_in_one_line_naming_the_flag(text: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        parse_duration(text, what="--device-timeout")
    assert str(info.value) == (
        f"--device-timeout: expected a duration like 30s, 5m or 500ms, got {text!r}"
    )
