"""Release versions: ``types.validate_version`` takes exactly what semver's ``Version.is_valid``
takes (the agent checks versions with its own pattern so that it need not import semver)."""

from __future__ import annotations

import random

import pytest
import semver

from edgefleet.common import types as t
from edgefleet.common.errors import InvalidInputError

CASES = [
    "1.0.0", "0.0.0", "10.20.30", "1.2.3-alpha", "1.2.3-alpha.1", "1.2.3-0.3.7",
    "1.2.3-x.7.z.92", "1.2.3+build", "1.2.3+build.1.2", "1.2.3-rc.1+build.5", "1.0.0-alpha-a.b-c",
    "1.0.0--", "1.0.0-0A", "1.0.0+0", "1.0.0+001", "1.0.0-0", "2.0.0-a.0.b",
    "", "1", "1.0", "1.0.0.0", "01.0.0", "1.01.0", "1.0.01", "1.0.0-01", "1.0.0-a.01",
    "1.0.0-", "1.0.0+", "1.0.0-a..b", "1.0.0+a..b", "1.0.0-a_b", "1.0.0+a_b", "v1.0.0",
    " 1.0.0", "1.0.0 ", "1.0.0\n", "1.0.0-\n", "1.0.0+é", "1.0.0-é", "\u0661.0.0", "1.0.0-\u0661",
    "-1.0.0", "1.-1.0", "1.0.0-+", "1.0.0+-", "1.0.0-a+b+c", "1.0.0-.a", "1.0.0-a.",
    "99999999999999999999.0.0", "1.2.3-0123", "1.2.3-0123a", "1.2.3----RC-SNAPSHOT.12.9.1--.12",
]  # fmt: skip


@pytest.mark.parametrize("version", CASES)
def test_the_pattern_agrees_with_semver(version: str) -> None:
    assert _takes(version) == semver.Version.is_valid(version)


def test_random_strings_agree_with_semver() -> None:
    rng = random.Random(10)
    alphabet = "0123456789.-+aZ_ é"
    taken = 0
    for _ in range(20000):
        head = ".".join(rng.choice(["0", "1", "12", "01", ""]) for _ in range(rng.randint(2, 4)))
        tail = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
        version = head + tail
        assert _takes(version) == semver.Version.is_valid(version), version
        taken += _takes(version)
    assert 200 < taken < 19000  # both kinds were tried


def _takes(version: str) -> bool:
    try:
        t.validate_version(version)
    except InvalidInputError:
        return False
    return True
