"""``.proto`` enums <-> their words, for any enum of the contract.

A value's word is its name after the enum's prefix, in lower case (``OBJECTIVE_SIZE`` ->
``size``), with ``-`` for ``_`` where the enum says so (``STRATEGY_KIND_ALL_AT_ONCE`` ->
``all-at-once``); the unspecified value (and one this build does not know) is ``""``. The
generated enums are the only table: a value added to the ``.proto`` has its word.
``rolloutwords`` names the rollout enums' words with these; the compression search's
``Objective`` is here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

from edgefleet.v1 import controller_pb2 as pb

V = TypeVar("V", bound=int)

_OBJECTIVE = "OBJECTIVE_"


def word(name_of: Callable[[V], str], value: V, prefix: str, *, dash: bool = False) -> str:
    """``name_of`` is the enum's ``Name``; ``""`` for 0 and for a value it does not know."""
    if not value:
        return ""
    try:
        text = name_of(value).removeprefix(prefix).lower()
    except ValueError:
        return ""
    return text.replace("_", "-") if dash else text


def value(value_of: Callable[[str], V], text: str, prefix: str, *, dash: bool = False) -> V:
    """``value_of`` is the enum's ``Value``; ``ValueError`` for a word that is none (one with
    ``_`` where ``dash`` says ``-``, ``""`` and ``unspecified`` included)."""
    refused = ValueError(f"not a word of {prefix.rstrip('_').lower()}: {text!r}")
    if not text or text != text.lower() or text == "unspecified" or (dash and "_" in text):
        raise refused
    name = prefix + text.upper()
    try:
        return value_of(name.replace("-", "_") if dash else name)
    except ValueError:
        raise refused from None


def words(
    name_of: Callable[[V], str], values: Iterable[V], prefix: str, *, dash: bool = False
) -> tuple[str, ...]:
    """Every value's word, in the ``.proto``'s order (the unspecified value left out)."""
    return tuple(word(name_of, v, prefix, dash=dash) for v in values if v)


def objective_word(v: pb.Objective.ValueType) -> str:
    """``""`` for the unspecified value (balanced) and for one this build does not know."""
    return word(pb.Objective.Name, v, _OBJECTIVE)


def objective_value(text: str) -> pb.Objective.ValueType:
    """The enum value of an objective word; ``ValueError`` for a word that is none."""
    return value(pb.Objective.Value, text, _OBJECTIVE)


def objective_words() -> tuple[str, ...]:
    return words(pb.Objective.Name, pb.Objective.values(), _OBJECTIVE)
