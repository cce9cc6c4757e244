"""The search's objectives are controller.proto's ``Objective``, one to one, by word; a
compression job reads its objective and golden mode by word, naming the choices when none fits."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

import pytest

from edgefleet.common import enumwords
from edgefleet.common.errors import InvalidInputError
from edgefleet.controller import compressing
from edgefleet.controller.compress.searching import Objective
from edgefleet.controller.compress.winnergolden import GoldenMode
from edgefleet.v1 import controller_pb2 as pb


def test_every_search_objective_is_a_proto_objective_and_back() -> None:
    assert [o.value for o in Objective] == list(enumwords.objective_words())
    for o in Objective:
        assert Objective(enumwords.objective_word(enumwords.objective_value(o))) is o
    assert enumwords.objective_value("size") == pb.OBJECTIVE_SIZE


@pytest.mark.parametrize(
    ("value", "word"),
    [
        (pb.OBJECTIVE_LATENCY, "latency"),
        (pb.OBJECTIVE_UNSPECIFIED, ""),  # the default: balanced
        (pb.Objective.ValueType(99), ""),  # from a newer client: no word, no crash
    ],
)
def test_objective_words(value: pb.Objective.ValueType, word: str) -> None:
    assert enumwords.objective_word(value) == word


@pytest.mark.parametrize("word", ["", "speed", "SIZE", "Balanced", "unspecified"])
def test_a_word_that_is_no_objective_is_refused(word: str) -> None:
    with pytest.raises(ValueError, match="not a word of objective"):
        enumwords.objective_value(word)


@pytest.mark.parametrize(
    ("parse", "text", "expected"),
    [
        (compressing.parse_objective, "", Objective.BALANCED),
        (compressing.parse_objective, "latency", Objective.LATENCY),
        (compressing.parse_golden, "", GoldenMode.AUTO),
        (compressing.parse_golden, "never", GoldenMode.NEVER),
    ],
)
def test_a_job_reads_its_objective_and_golden_mode_by_word(
    parse: Callable[[str], StrEnum], text: str, expected: StrEnum
) -> None:
    assert parse(text) is expected


@pytest.mark.parametrize(
    ("parse", "message"),
    [
        (
            compressing.parse_objective,
            "unknown objective 'x': choose one of balanced, latency, size",
        ),
        (compressing.parse_golden, "unknown golden mode 'x': choose one of auto, always, never"),
    ],
)
def test_a_job_with_no_such_word_is_refused_naming_the_choices(
    parse: Callable[[str], StrEnum], message: str
) -> None:
    with pytest.raises(InvalidInputError) as info:
        parse("x")
    assert str(info.value) == message
