"""The one definition of how eval, calibration and golden ``.npz`` files hold a model's inputs.

Two layouts, told apart by their keys:

* **batched** (the first one): one array per model input, named after the input (golden data
  may say ``input/<name>``), samples along the first axis, every input with the same count;
  ``broadcast/<name>`` (and, in eval data, any 0-d array) is given once and fed unchanged with
  every sample; eval data may add ``labels`` (one per sample), golden data ``expected/<output>``.
* **feeds**: a list of feeds, each a dict of arrays with the model's own shapes (no shared
  sample axis: unbatched inputs, scalars such as a sample rate, a different sequence length in
  every feed). Feed ``K`` (0, 1, 2, ... without gaps) is every key ``feedK/<name>``: the
  inputs by name, and optionally ``feedK/labels`` (eval: the labels of that feed's outputs) or
  ``feedK/expected/<output>`` (golden). Keys outside any feed are the file's own (golden
  ``tolerance/<output>``); each consumer says which it accepts.

A recurrent model runs its feeds as one stream with ``--carry IN=OUT``: output ``OUT`` of feed
``K`` becomes input ``IN`` of feed ``K+1``; the first feed supplies the initial ``IN`` (a later
feed that gives ``IN`` itself starts a new stream there). Golden data of such a model says so
itself: ``carry/<IN>``, a 0-d string array holding ``OUT`` (``carry_arrays``, ``read_carry``),
outside the feeds; its later feeds leave ``IN`` out, and a device runs them as one stream, so
the expectations check the whole stream (a state that drifts fails), not each step alone.

Pure: numpy only, shared by the controller (eval, calibration, golden normalization) and the
agent (golden checks).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Any]
Feed = dict[str, Array]
PREFIX = "feed"
LABELS = "labels"
"""Eval data: the labels (batched: ``labels``; feeds: ``feedK/labels``)."""
INPUT = "input/"
"""Golden data: an input (``input/<name>``; feeds: ``feedK/input/<name>``)."""
EXPECTED = "expected/"
"""Golden data: an output's expectation (``expected/<output>``, ``feedK/expected/<output>``)."""
BROADCAST = "broadcast/"
"""Batched layout: an input given once and fed with every sample (``broadcast/<name>``)."""
TOLERANCE = "tolerance/"
"""Golden data: an output's max abs error on devices (``tolerance/<output>``, a float scalar)."""
CARRY = "carry/"
"""Golden feeds: ``carry/<input>`` names (a 0-d string array) the output fed into it."""
_KEY = re.compile(r"^feed(0|[1-9][0-9]*)/(.+)$")


class FeedsError(ValueError):
    """A feeds-layout file that is malformed (gaps in the numbering, a feed with no arrays)."""


def key(index: int, name: str) -> str:
    """``feed3/input_ids``."""
    return f"{PREFIX}{index}/{name}"


def is_feeds(keys: Iterable[str]) -> bool:
    """True when any key is a ``feedK/<name>`` key (the feeds layout)."""
    return any(_KEY.match(k) for k in keys)


def split(arrays: Mapping[str, Array]) -> tuple[list[Feed], dict[str, Array]]:
    """(the feeds in order, each by name within its feed; the keys outside any feed)."""
    by_index: dict[int, Feed] = {}
    rest: dict[str, Array] = {}
    for k, value in arrays.items():
        m = _KEY.match(k)
        if m is None:
            rest[k] = value
            continue
        by_index.setdefault(int(m.group(1)), {})[m.group(2)] = value
    missing = sorted(set(range(len(by_index))) - set(by_index))
    if missing:
        raise FeedsError(
            f"feeds must be numbered feed0, feed1, ... without gaps; {len(by_index)} feed(s) "
            f"but no feed{missing[0]}/ arrays"
        )
    return [by_index[i] for i in range(len(by_index))], rest


def join(feeds: Sequence[Mapping[str, Array]], rest: Mapping[str, Array] | None = None) -> Feed:
    """The arrays of ``feeds`` under ``feedK/<name>`` keys, plus ``rest`` as they are."""
    out: Feed = dict(rest or {})
    for i, feed in enumerate(feeds):
        out |= {key(i, name): value for name, value in feed.items()}
    return out


def parse_carry(items: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """``IN=OUT`` pairs (``--carry state=stateN``), each input carried at most once."""
    pairs: list[tuple[str, str]] = []
    for item in items:
        inp, sep, out = (s.strip() for s in item.partition("="))
        if not sep or not inp or not out:
            raise FeedsError(f"--carry takes INPUT=OUTPUT (state=stateN), got {item!r}")
        if any(inp == p[0] for p in pairs):
            raise FeedsError(f"--carry names input {inp!r} twice")
        pairs.append((inp, out))
    return tuple(pairs)


def carry_arrays(pairs: Iterable[tuple[str, str]]) -> dict[str, Array]:
    """``carry/<IN>``: ``OUT`` as 0-d string arrays, for golden data in the feeds layout."""
    return {f"{CARRY}{inp}": np.asarray(out, dtype=np.str_) for inp, out in pairs}


def read_carry(rest: Mapping[str, Array]) -> tuple[tuple[str, str], ...]:
    """The ``(IN, OUT)`` pairs of the ``carry/<IN>`` arrays in ``rest`` (keys outside any
    feed); ``FeedsError`` for one that is not a 0-d string naming an output."""
    pairs = []
    for k in sorted(rest):
        if not k.startswith(CARRY):
            continue
        value = rest[k]
        inp = k.removeprefix(CARRY)
        if value.ndim != 0 or value.dtype.kind != "U" or not str(value) or not inp:
            raise FeedsError(
                f"{k!r} must be a 0-d string array naming the output carried into {inp!r}, "
                f"got {value.dtype.name}{list(value.shape)}"
            )
        pairs.append((inp, str(value)))
    return tuple(pairs)
