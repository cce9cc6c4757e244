from __future__ import annotations

import inspect

import pytest

from edgefleet.common.errors import InvalidInputError
from edgefleet.controller.rollouts import strategy
from edgefleet.v1 import controller_pb2


@pytest.mark.parametrize(
    ("kwargs", "fleet", "steps"),
    [
        ({}, 5, (5,)),
        ({"kind": "canary"}, 5, (1, 5)),
        ({"kind": "canary", "canary": "10%", "waves": "25%,50%,100%"}, 20, (2, 5, 10, 20)),
        ({"kind": "canary", "canary": "10%", "waves": "25%,50%,100%"}, 3, (1, 2, 3)),
        ({"kind": "canary", "canary": "2", "waves": "4,8"}, 6, (2, 4, 6)),
        ({"kind": "canary", "canary": "50%"}, 1, (1,)),
        ({"kind": "canary", "canary": "1", "waves": "50%"}, 1000, (1, 500, 1000)),
        ({}, 0, ()),
    ],
)
def test_steps(kwargs: dict[str, str], fleet: int, steps: tuple[int, ...]) -> None:
    assert strategy.parse(**kwargs).steps(fleet) == steps  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "blue-green"}, "--strategy must be one of"),
        ({"canary": "10%"}, "need --strategy canary"),
        ({"kind": "canary", "canary": "ten"}, "--canary: expected a count"),
        ({"kind": "canary", "canary": "150%"}, "not between 0% and 100%"),
        ({"kind": "canary", "canary": "0"}, "at least one device"),
        ({"kind": "canary", "canary": "1.5"}, "must be whole"),
        ({"kind": "canary", "waves": "50%,25%"}, "must increase"),
        ({"kind": "canary", "waves": "2,50%"}, "not both"),
        ({"bake": "soon"}, "--bake: expected a duration"),
        ({"max_failures": "x"}, "--max-failures"),
        ({"device_timeout": "0s"}, "must be positive"),
        ({"max_parallel": -1}, "--max-parallel"),
    ],
)
def test_invalid_values_fail_before_anything_is_sent(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidInputError, match=message):
        strategy.parse(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30.0), ("500ms", 0.5), ("2m", 120.0), ("1h", 3600.0), ("7", 7.0)]
)
def test_durations(text: str, seconds: float) -> None:
    """``--bake`` and ``--device-timeout`` read durations as edgectl's flags do."""
    parsed = strategy.parse(bake=text, device_timeout=text)
    assert (parsed.bake_s, parsed.device_timeout_s) == (seconds, seconds)


@pytest.mark.parametrize(
    ("limit", "failed", "sent", "abort"),
    [
        ("0%", 0, 5, False),
        ("0%", 1, 5, True),
        ("5%", 1, 20, False),
        ("5%", 2, 20, True),
        ("50%", 1, 2, False),
        ("1", 1, 3, False),
        ("1", 2, 3, True),
    ],
)
def test_failure_threshold(limit: str, failed: int, sent: int, abort: bool) -> None:
    assert strategy.parse(max_failures=limit).too_many_failures(failed, sent) is abort


def test_the_wire_strategy_fields_are_the_parse_keywords() -> None:
    """The operator API's RolloutStrategy carries each of ``parse``'s options in a field of the
    same name (edgectl builds it from them, the controller and ``--json`` read it by name)."""
    fields = {f.name for f in controller_pb2.RolloutStrategy.DESCRIPTOR.fields}
    keywords = set(inspect.signature(strategy.parse).parameters)
    assert fields - {"strategy_kind"} == keywords - {"kind"}
