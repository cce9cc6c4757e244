"""The search's objectives are controller.proto's ``Objective``, one to one, by word."""

from __future__ import annotations

import pytest

from edgefleet.common import enumwords
from edgefleet.controller.compress.searching import Objective
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
