"""The failover choice as tables: (neighbours, own state, release, now) -> ordered candidates."""

from __future__ import annotations

import pytest

from edgefleet.agent.failover import Neighbour, OwnState, candidates, wanted_release

ME = OwnState(device_id="me", target_release="digits:2.0.0", active_release="digits:1.0.0")


def n(
    device_id: str, release: str = "digits:1.0.0", *, online: bool = True, seen: float = 10.0
) -> Neighbour:
    return Neighbour(
        device_id=device_id,
        endpoint=f"{device_id}:50051" if online else "",
        release=release,
        online=online,
        last_seen=seen,
    )


@pytest.mark.parametrize(
    ("neighbours", "own", "release", "expected"),
    [
        pytest.param([], ME, "", [], id="nobody"),
        pytest.param([n("me")], ME, "", [], id="never-myself"),
        pytest.param([n("a", online=False)], ME, "", [], id="offline-left-out"),
        pytest.param([n("a", release="")], ME, "", [], id="no-model-left-out"),
        pytest.param(
            [Neighbour("a", endpoint="", release="r", online=True)], ME, "", [], id="no-endpoint"
        ),
        pytest.param(
            [n("a", "digits:1.0.0"), n("b", "digits:3.0.0"), n("c", "digits:2.0.0")],
            ME,
            "digits:3.0.0",
            ["b", "a", "c"],
            id="request-release-first",
        ),
        pytest.param(
            [n("a", "digits:1.0.0"), n("c", "digits:2.0.0")],
            ME,
            "",
            ["c", "a"],
            id="own-target-release-first",
        ),
        pytest.param(
            [n("a", "digits:3.0.0"), n("c", "digits:1.0.0")],
            OwnState("me", active_release="digits:1.0.0"),
            "",
            ["c", "a"],
            id="own-last-active-when-no-target",
        ),
        pytest.param(
            [n("b", seen=5.0), n("a", seen=5.0), n("c", seen=9.0)],
            OwnState("me"),
            "",
            ["c", "a", "b"],
            id="no-preference-most-recent-then-id",
        ),
        pytest.param(
            [n("a", "x:1", seen=1.0), n("b", "digits:2.0.0", seen=0.0), n("z", online=False)],
            ME,
            "",
            ["b", "a"],
            id="release-beats-recency",
        ),
    ],
)
def test_candidates(
    neighbours: list[Neighbour], own: OwnState, release: str, expected: list[str]
) -> None:
    got = candidates(neighbours, own=own, release=release, now=100.0)
    assert [c.device_id for c in got] == expected


@pytest.mark.parametrize(
    ("silence", "expected"), [(None, ["old", "new"]), (30.0, ["new"]), (95.0, ["old", "new"])]
)
def test_max_silence(silence: float | None, expected: list[str]) -> None:
    table = [n("old", "digits:2.0.0", seen=10.0), n("new", "digits:1.0.0", seen=90.0)]
    got = candidates(table, own=ME, now=100.0, max_silence=silence)
    assert [c.device_id for c in got] == expected


@pytest.mark.parametrize(
    ("request_release", "own", "expected"),
    [
        ("r:3", ME, "r:3"),
        ("", ME, "digits:2.0.0"),
        ("", OwnState("me", active_release="digits:1.0.0"), "digits:1.0.0"),
        ("", OwnState("me"), ""),
    ],
)
def test_wanted_release(request_release: str, own: OwnState, expected: str) -> None:
    assert wanted_release(request_release, own) == expected
