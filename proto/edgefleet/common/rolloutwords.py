"""``controller.proto``'s rollout enums <-> their words.

The words are what ``edgectl`` prints and ``--json`` carries, what the controller stores in its
database, records in a rollout's history and keys ``RolloutInfo.device_counts`` by, and the
values of the engine's ``RolloutPhase``, ``TargetState`` and strategy ``Kind``: a value's name
after its enum's prefix, in lower case (``ROLLOUT_PHASE_ROLLED_BACK`` -> ``rolled_back``), with
``-`` for ``_`` in a strategy kind (``STRATEGY_KIND_ALL_AT_ONCE`` -> ``all-at-once``, as
``edgectl deploy --strategy`` takes it). The unspecified value is ``""``. The generated enums
are the only table: a value added to the ``.proto`` has its word (``enumwords`` maps them).
"""

from __future__ import annotations

from edgefleet.common import enumwords
from edgefleet.v1 import controller_pb2 as pb

_PHASE = "ROLLOUT_PHASE_"
_TARGET = "TARGET_STATE_"
_KIND = "STRATEGY_KIND_"


def phase_word(value: pb.RolloutPhase.ValueType) -> str:
    """``""`` for the unspecified value and for one this build does not know."""
    return enumwords.word(pb.RolloutPhase.Name, value, _PHASE)


def phase_value(word: str) -> pb.RolloutPhase.ValueType:
    """The enum value of a phase word; ``ValueError`` for a word that is none."""
    return enumwords.value(pb.RolloutPhase.Value, word, _PHASE)


def target_state_word(value: pb.TargetState.ValueType) -> str:
    return enumwords.word(pb.TargetState.Name, value, _TARGET)


def target_state_value(word: str) -> pb.TargetState.ValueType:
    return enumwords.value(pb.TargetState.Value, word, _TARGET)


def kind_word(value: pb.StrategyKind.ValueType) -> str:
    return enumwords.word(pb.StrategyKind.Name, value, _KIND, dash=True)


def kind_value(word: str) -> pb.StrategyKind.ValueType:
    """``ValueError`` for a word that is none (``all_at_once`` included)."""
    return enumwords.value(pb.StrategyKind.Value, word, _KIND, dash=True)


def phase_words() -> tuple[str, ...]:
    """Every phase's word, in the ``.proto``'s order (the unspecified value left out)."""
    return enumwords.words(pb.RolloutPhase.Name, pb.RolloutPhase.values(), _PHASE)


def target_state_words() -> tuple[str, ...]:
    return enumwords.words(pb.TargetState.Name, pb.TargetState.values(), _TARGET)


def kind_words() -> tuple[str, ...]:
    return enumwords.words(pb.StrategyKind.Name, pb.StrategyKind.values(), _KIND, dash=True)
