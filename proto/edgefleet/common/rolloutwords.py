"""``controller.proto``'s rollout enums <-> their words.

The words are what ``edgectl`` prints and ``--json`` carries, what the controller stores in its
database, records in a rollout's history and keys ``RolloutInfo.device_counts`` by, and the
values of the engine's ``RolloutPhase``, ``TargetState`` and strategy ``Kind``: a value's name
after its enum's prefix, in lower case (``ROLLOUT_PHASE_ROLLED_BACK`` -> ``rolled_back``), with
``-`` for ``_`` in a strategy kind (``STRATEGY_KIND_ALL_AT_ONCE`` -> ``all-at-once``, as
``edgectl deploy --strategy`` takes it). The unspecified value is ``""``. The generated enums
are the only table: a value added to the ``.proto`` has its word.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from edgefleet.v1 import controller_pb2 as pb

_PHASE = "ROLLOUT_PHASE_"
_TARGET = "TARGET_STATE_"
_KIND = "STRATEGY_KIND_"
V = TypeVar("V", bound=int)


def phase_word(value: pb.RolloutPhase.ValueType) -> str:
    """``""`` for the unspecified value and for one this build does not know."""
    return _word(pb.RolloutPhase.Name, value, _PHASE)


def phase_value(word: str) -> pb.RolloutPhase.ValueType:
    """The enum value of a phase word; ``ValueError`` for a word that is none."""
    return pb.RolloutPhase.Value(_name(word, _PHASE))


def target_state_word(value: pb.TargetState.ValueType) -> str:
    return _word(pb.TargetState.Name, value, _TARGET)


def target_state_value(word: str) -> pb.TargetState.ValueType:
    return pb.TargetState.Value(_name(word, _TARGET))


def kind_word(value: pb.StrategyKind.ValueType) -> str:
    return _word(pb.StrategyKind.Name, value, _KIND).replace("_", "-")


def kind_value(word: str) -> pb.StrategyKind.ValueType:
    """``ValueError`` for a word that is none (``all_at_once`` included)."""
    name = _name(word, _KIND)
    if "_" in word:
        raise ValueError(f"not a word of strategy_kind: {word!r}")
    return pb.StrategyKind.Value(name.replace("-", "_"))


def phase_words() -> tuple[str, ...]:
    """Every phase's word, in the ``.proto``'s order (the unspecified value left out)."""
    return tuple(phase_word(v) for v in pb.RolloutPhase.values() if v)


def target_state_words() -> tuple[str, ...]:
    return tuple(target_state_word(v) for v in pb.TargetState.values() if v)


def kind_words() -> tuple[str, ...]:
    return tuple(kind_word(v) for v in pb.StrategyKind.values() if v)


def _word(name_of: Callable[[V], str], value: V, prefix: str) -> str:
    if not value:
        return ""
    try:
        return name_of(value).removeprefix(prefix).lower()
    except ValueError:
        return ""


def _name(word: str, prefix: str) -> str:
    if not word or word != word.lower() or word == "unspecified":
        raise ValueError(f"not a word of {prefix.rstrip('_').lower()}: {word!r}")
    return prefix + word.upper()
