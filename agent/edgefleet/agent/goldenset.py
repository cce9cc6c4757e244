"""Golden data of a release: inputs with the outputs they must give, and how to compare them.

The blob (an ``.npz`` named in the signed manifest, fetched and verified like the model) holds
``input/<name>`` arrays, one per model input, all with the same first dimension (rows), and
``expected/<output>`` arrays for some or all outputs. ``broadcast/<name>`` arrays are inputs
given once and fed unchanged with every row (a scalar sample rate, a recurrent state): the rows
then run one at a time and the expected outputs are the runs' outputs joined on the first axis.
``tolerance/<output>`` scalars are the max abs error the release allows that output. Or the
feeds layout (``edgefleet.common.feeds``): ``feedK/input/<name>`` and ``feedK/expected/<output>``
for feeds 0, 1, ..., each in the model's own shapes (unbatched, scalars, any length), each run
on its own and its outputs judged against its own expectations (``GoldenSet.steps``); with
``carry/<IN>`` (a recurrent model's ``--carry IN=OUT``: ``GoldenSet.carry``) the feeds run as
one stream, output ``OUT`` of feed ``K`` fed as input ``IN`` of feed ``K+1`` where that feed
does not give ``IN`` itself, so the expectations check the whole stream.
``compare`` is pure numpy: it says what is wrong with a run's outputs, in words for
``last_error``, and nothing when they pass.

How an output is judged (``HealthPolicy`` gives the tolerances):

* any float output holding NaN or infinity fails, expected or not;
* classifier-like outputs: an integer (or bool) output, or a 2-D float output with at least
  two columns (scores, whose argmax is the class), pass when the share of rows whose top-1
  class equals the expected one is at least ``golden_min_agreement``;
* other float outputs pass when the largest absolute error is at most
  ``golden_max_abs_error``;
* an output with a ``tolerance/<output>`` in the data (compressed releases carry the tolerance
  measured on the model itself) is judged by its largest absolute error, whatever its shape,
  against the larger of that tolerance and ``golden_max_abs_error``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet.common import feeds, npz

Array = npt.NDArray[Any]
INPUT, EXPECTED = feeds.INPUT, feeds.EXPECTED  # the layout: edgefleet.common.feeds
BROADCAST, TOLERANCE = feeds.BROADCAST, feeds.TOLERANCE


class GoldenDataError(ValueError):
    """The golden blob is not what the manifest's release needs (the message says why)."""


@dataclass(frozen=True)
class GoldenSet:
    inputs: Mapping[str, Array]
    expected: Mapping[str, Array]
    broadcast: Mapping[str, Array] = field(default_factory=dict)
    tolerances: Mapping[str, float] = field(default_factory=dict)
    steps: tuple[tuple[Mapping[str, Array], Mapping[str, Array]], ...] = ()
    """The feeds layout: (inputs, expected outputs) of each feed, run one at a time."""
    carry: tuple[tuple[str, str], ...] = ()
    """Feeds: (IN, OUT) pairs; a feed without input IN takes the previous feed's output OUT."""

    @property
    def rows(self) -> int:
        if self.steps:
            return len(self.steps)
        return int(next(iter(self.inputs.values())).shape[0])

    def feed(self, start: int, stop: int) -> dict[str, Array]:
        """Rows ``start:stop`` of every input, and the broadcast inputs whole (the feeds
        layout: feed ``start``, one at a time; a carried input it leaves out is the previous
        feed's expected output, where the data gives that, as a stand-in for timing)."""
        if self.steps:
            feed = dict(self.steps[start][0])
            for inp, out in self.carry:
                if inp not in feed and start and out in self.steps[start - 1][1]:
                    feed[inp] = self.steps[start - 1][1][out]
            return feed
        return {name: a[start:stop] for name, a in self.inputs.items()} | dict(self.broadcast)


def parse(data: bytes) -> GoldenSet:
    """Read a golden ``.npz``; ``GoldenDataError`` naming what is missing or malformed."""
    import zipfile  # here, as in npz.read: an idle agent reads no golden data

    try:
        arrays = npz.read(data)  # sizes checked against the archive before anything is made
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise GoldenDataError(f"golden data is not a readable .npz file: {exc}") from exc
    if feeds.is_feeds(arrays):
        return _parse_feeds(arrays)
    inputs = {k.removeprefix(INPUT): v for k, v in arrays.items() if k.startswith(INPUT)}
    expected = {k.removeprefix(EXPECTED): v for k, v in arrays.items() if k.startswith(EXPECTED)}
    shared = {k.removeprefix(BROADCAST): v for k, v in arrays.items() if k.startswith(BROADCAST)}
    tolerances: dict[str, float] = {}
    for key, value in arrays.items():
        if key.startswith(TOLERANCE):
            if value.ndim != 0 or value.dtype.kind != "f" or not float(value) >= 0:
                raise GoldenDataError(f"golden {key!r} is not a non-negative float scalar")
            tolerances[key.removeprefix(TOLERANCE)] = float(value)
    if not inputs:
        raise GoldenDataError("golden data holds no input/<name> array")
    with_rows = (*inputs.values(), *(() if shared else expected.values()))
    rows = {a.shape[0] if a.ndim else -1 for a in with_rows}
    if len(rows) != 1 or rows == {-1}:
        raise GoldenDataError(
            "golden arrays must share their first dimension (rows); got "
            + ", ".join(f"{k}{list(v.shape)}" for k, v in arrays.items())
        )
    return GoldenSet(inputs, expected, shared, tolerances)


def _parse_feeds(arrays: Mapping[str, Array]) -> GoldenSet:
    try:
        steps, rest = feeds.split(arrays)
    except feeds.FeedsError as exc:
        raise GoldenDataError(f"golden data: {exc}") from exc
    try:
        carry = feeds.read_carry(rest)
    except feeds.FeedsError as exc:
        raise GoldenDataError(f"golden data: {exc}") from exc
    tolerances: dict[str, float] = {}
    for key, value in rest.items():
        if key.startswith(feeds.CARRY):
            continue
        if not key.startswith(TOLERANCE):
            raise GoldenDataError(f"golden array {key!r} is outside any feed")
        if value.ndim != 0 or value.dtype.kind != "f" or not float(value) >= 0:
            raise GoldenDataError(f"golden {key!r} is not a non-negative float scalar")
        tolerances[key.removeprefix(TOLERANCE)] = float(value)
    parsed = []
    for i, step in enumerate(steps):
        ins = {k.removeprefix(INPUT): v for k, v in step.items() if k.startswith(INPUT)}
        want = {k.removeprefix(EXPECTED): v for k, v in step.items() if k.startswith(EXPECTED)}
        if not ins or len(ins) + len(want) != len(step):
            raise GoldenDataError(
                f"golden feed{i}/ must hold input/<name> (and expected/<output>) arrays, got "
                + ", ".join(sorted(step))
            )
        parsed.append((ins, want))
    missing = [inp for inp, _ in carry if inp not in parsed[0][0]]
    if missing:
        raise GoldenDataError(
            "golden feed0/ must give the initial value of every carried input "
            f"({', '.join(missing)})"
        )
    return GoldenSet(parsed[0][0], {}, {}, tolerances, tuple(parsed), carry)


def load(path: Path) -> GoldenSet:
    return parse(path.read_bytes())


def nonfinite(outputs: Mapping[str, Array]) -> dict[str, str]:
    """Outputs holding NaN or infinity, each with the problem in words."""
    problems = {}
    for name, value in outputs.items():
        a = np.asarray(value)
        if a.dtype.kind in "fc":
            bad = int(a.size - np.count_nonzero(np.isfinite(a)))
            if bad:
                problems[name] = f"output {name!r} holds NaN or infinity ({bad} of {a.size} values)"
    return problems


def is_classifier(a: Array) -> bool:
    """Integer/bool labels, or a 2-D float score table whose argmax is the class."""
    return a.dtype.kind in "iub" or (a.dtype.kind == "f" and a.ndim == 2 and a.shape[1] >= 2)


def top1(a: Array) -> Array:
    if a.dtype.kind == "f":
        return np.asarray(np.argmax(a, axis=1))
    return a.reshape(a.shape[0], -1) if a.ndim > 1 else a


def compare(
    expected: Mapping[str, Array],
    actual: Mapping[str, Array],
    *,
    max_abs_error: float,
    min_agreement: float,
    tolerances: Mapping[str, float] | None = None,
) -> list[str]:
    """What is wrong with ``actual`` against ``expected``; empty when it passes.
    ``tolerances``: per output, a max abs error to judge it by (at least ``max_abs_error``)."""
    tolerances = tolerances or {}
    broken = nonfinite(actual)
    problems = list(broken.values())
    for name, expected_value in expected.items():
        if name not in actual:
            problems.append(f"output {name!r} is missing")
            continue
        if name in broken:
            continue
        got, want = np.asarray(actual[name]), np.asarray(expected_value)
        if got.shape != want.shape:
            problems.append(
                f"output {name!r} has shape {list(got.shape)}, expected {list(want.shape)}"
            )
        elif is_classifier(want) and name not in tolerances:
            problems += _agreement(name, top1(want), top1(got), min_agreement)
        else:
            limit = max(max_abs_error, tolerances.get(name, 0.0))
            error = float(np.max(np.abs(got.astype(np.float64) - want))) if want.size else 0.0
            if not error <= limit:
                problems.append(f"output {name!r}: max abs error {error:.3g} is over {limit:g}")
    return problems


def _agreement(name: str, want: Array, got: Array, minimum: float) -> list[str]:
    rows = want.shape[0]
    same = want == got
    agree = same.all(axis=1) if same.ndim > 1 else same
    share = float(np.mean(agree)) if rows else 1.0
    if share + 1e-12 >= minimum:
        return []
    differ = rows - int(np.count_nonzero(agree))
    return [
        f"output {name!r}: top-1 agreement {share:.3f} is below {minimum:g} "
        f"({differ} of {rows} golden rows differ)"
    ]
