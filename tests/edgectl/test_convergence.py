"""When a deploy counts as converged, failed or pending: a table of cases, no I/O."""

from __future__ import annotations

import pytest

from edgefleet.common.types import InstallPhase as P
from edgefleet.edgectl.convergence import Observed, Outcome, assess, outcome

R = "digits:1.1.0"
OLD = "digits:1.0.0"


def seen(phase: P | None, active: str = "", gen: int = 0, target: str = "") -> Observed:
    return Observed("d1", phase=phase, active_release=active, generation_applied=gen,
                    target_release=target)  # fmt: skip


@pytest.mark.parametrize(
    ("observed", "expected"),
    [
        (None, Outcome.PENDING),  # not registered yet
        (seen(P.ACTIVE, OLD, gen=4), Outcome.PENDING),  # has not got the new generation yet
        (seen(P.FETCHING, OLD, gen=4, target=R), Outcome.PENDING),
        (seen(P.HEALTH_CHECK, OLD, gen=5, target=R), Outcome.PENDING),  # applied, still checking
        (seen(P.ACTIVE, R, gen=5), Outcome.CONVERGED),
        (seen(P.ACTIVE, R, gen=7), Outcome.CONVERGED),  # a later deploy overtook this one
        (seen(P.ACTIVE, OLD, gen=5), Outcome.FAILED),  # applied ours, fell back to the last good
        (seen(P.ROLLED_BACK, OLD, gen=5, target=R), Outcome.FAILED),
        (seen(P.FAILED, OLD, gen=5, target=R), Outcome.FAILED),
        (seen(P.FAILED, OLD, gen=4, target=R), Outcome.FAILED),  # failing on this very release
        (seen(P.FAILED, OLD, gen=4, target="digits:0.9.0"), Outcome.PENDING),  # an old failure
        (seen(P.IDLE, "", gen=0), Outcome.PENDING),
    ],
)
def test_outcome(observed: Observed | None, expected: Outcome) -> None:
    assert outcome(R, 5, observed) is expected


def test_assess_counts_and_orders_devices() -> None:
    progress = assess(
        R,
        {"b": 3, "a": 2, "c": 9},
        {"a": Observed("a", P.ACTIVE, R, generation_applied=2),
         "b": Observed("b", P.FAILED, OLD, target_release=R, generation_applied=3)},
    )  # fmt: skip
    assert [d.device_id for d in progress.devices] == ["a", "b", "c"]
    assert [d.outcome for d in progress.devices] == [
        Outcome.CONVERGED,
        Outcome.FAILED,
        Outcome.PENDING,
    ]
    assert not progress.done and not progress.ok
    assert progress.count(Outcome.CONVERGED) == 1


def test_all_converged_is_done_and_ok() -> None:
    progress = assess(R, {"a": 1}, {"a": Observed("a", P.ACTIVE, R, generation_applied=1)})
    assert progress.done and progress.ok


def test_no_targets_is_trivially_done() -> None:
    progress = assess(R, {}, {})
    assert progress.done and progress.ok
