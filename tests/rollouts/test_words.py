"""The engine's phases, device states and strategy kinds are controller.proto's enums, one to
one, by word."""

from __future__ import annotations

import pytest

from edgefleet.common import rolloutwords
from edgefleet.controller.rollouts.engine import RolloutPhase, TargetState
from edgefleet.controller.rollouts.rows import ROLLBACK
from edgefleet.controller.rollouts.strategy import Kind
from edgefleet.v1 import controller_pb2 as pb


def test_every_engine_phase_is_a_proto_phase_and_back() -> None:
    assert [p.value for p in RolloutPhase] == list(rolloutwords.phase_words())
    for p in RolloutPhase:
        assert RolloutPhase(rolloutwords.phase_word(rolloutwords.phase_value(p))) is p


def test_every_engine_target_state_is_a_proto_target_state_and_back() -> None:
    assert [s.value for s in TargetState] == list(rolloutwords.target_state_words())
    for s in TargetState:
        assert TargetState(rolloutwords.target_state_word(rolloutwords.target_state_value(s))) is s


def test_every_strategy_kind_and_a_fleet_rollback_is_a_proto_kind_and_back() -> None:
    assert [*(k.value for k in Kind), ROLLBACK] == list(rolloutwords.kind_words())
    for word in rolloutwords.kind_words():
        assert rolloutwords.kind_word(rolloutwords.kind_value(word)) == word
    assert rolloutwords.kind_value("all-at-once") == pb.STRATEGY_KIND_ALL_AT_ONCE


@pytest.mark.parametrize("word", ["", "all_at_once", "blue-green", "Canary"])
def test_a_word_that_is_no_strategy_kind_is_refused(word: str) -> None:
    with pytest.raises(ValueError):
        rolloutwords.kind_value(word)


@pytest.mark.parametrize(
    ("value", "word"),
    [
        (pb.ROLLOUT_PHASE_ROLLED_BACK, "rolled_back"),
        (pb.ROLLOUT_PHASE_CANARY, "canary"),
        (pb.ROLLOUT_PHASE_UNSPECIFIED, ""),
        (pb.RolloutPhase.ValueType(99), ""),  # from a newer controller: no word, no crash
    ],
)
def test_phase_words(value: pb.RolloutPhase.ValueType, word: str) -> None:
    assert rolloutwords.phase_word(value) == word


@pytest.mark.parametrize("word", ["", "aborted", "ROLLED_BACK", "Canary", "unspecified"])
def test_a_word_that_is_no_phase_is_refused(word: str) -> None:
    with pytest.raises(ValueError):
        rolloutwords.phase_value(word)


def test_device_counts_are_keyed_by_the_same_words() -> None:
    assert rolloutwords.target_state_word(pb.TARGET_STATE_ROLLING_BACK) == "rolling_back"
    with pytest.raises(ValueError):
        rolloutwords.target_state_value("rolled_back")
