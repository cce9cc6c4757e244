"""Golden feeds of a recurrent model checked as one stream (``carry/<IN>``): a feed that leaves
the carried input out takes the model's own output of the previous feed, so the expectations
check the whole stream and a state that drifts fails. Real ONNX Runtime, the agent's own
``ModelRuntime`` and golden reader, a stateful model built here."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from edgefleet.agent import checking
from edgefleet.agent import goldenset as g
from edgefleet.common import feeds
from edgefleet.common import types as t
from tests.agent.test_blame import runtime_of
from tests.compress.test_feeds import CARRY, _by_hand, recurrent, stream

POLICY = t.HealthPolicy(golden_max_abs_error=1e-4)


def golden_npz(given: list[dict[str, np.ndarray]], outs: list[list[np.ndarray]]) -> bytes:
    """Golden feeds: ``given`` (only feed 0 holds ``state``), ``outs`` (y, stateN) expected."""
    arrays: dict[str, np.ndarray] = dict(feeds.carry_arrays(CARRY))
    for i, (feed, (y, state_n)) in enumerate(zip(given, outs, strict=True)):
        arrays |= {feeds.key(i, f"input/{k}"): v for k, v in feed.items()}
        arrays |= {feeds.key(i, "expected/y"): y, feeds.key(i, "expected/stateN"): state_n}
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def test_golden_feeds_run_as_one_stream_on_the_device(tmp_path: Path) -> None:
    model, given = recurrent(), stream(6)
    assert all("state" not in f for f in given[1:])
    golden = g.parse(golden_npz(given, _by_hand(model, given)))
    assert golden.carry == CARRY and golden.rows == 6
    rt = runtime_of(model, tmp_path)
    assert checking.output_problems(rt, golden, POLICY) == []
    timed = checking.single_feeds(rt, golden)  # later feeds take feed K-1's expected state
    assert len(timed) == 6 and all("state" in f for f in timed)
    seen = checking.examine(rt, golden, POLICY)
    assert seen.output_problems == () and seen.latency.samples > 0


def test_a_stream_whose_state_drifts_fails_where_steps_alone_would_pass(tmp_path: Path) -> None:
    """Expectations made step by step from a fresh zero state (what each step alone gives)
    match the stream's first feed only: the check sees the carried state."""
    model, given = recurrent(), stream(6)
    alone = [_by_hand(model, [f | {"state": given[0]["state"]}])[0] for f in given]
    problems = checking.output_problems(
        runtime_of(model, tmp_path), g.parse(golden_npz(given, alone)), POLICY
    )
    assert problems and all(not p.startswith("feed 0:") for p in problems), problems
    assert any(p.startswith("feed 1: output 'stateN': max abs error") for p in problems), problems


def test_carried_golden_data_that_cannot_form_a_stream_is_refused_in_words(
    tmp_path: Path,
) -> None:
    model, given = recurrent(), stream(3)
    outs = _by_hand(model, given)
    no_start = golden_npz([{k: v for k, v in f.items() if k != "state"} for f in given], outs)
    with pytest.raises(g.GoldenDataError, match="initial value of every carried input"):
        g.parse(no_start)
    with np.load(io.BytesIO(golden_npz(given, outs))) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["carry/state"] = np.array([1.0])
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with pytest.raises(g.GoldenDataError, match="0-d string array naming the output"):
        g.parse(buf.getvalue())
    with np.load(io.BytesIO(golden_npz(given, outs))) as npz:  # from an output the model lacks
        arrays = {k: npz[k] for k in npz.files} | {"carry/state": np.array("nope")}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    problems = checking.output_problems(
        runtime_of(model, tmp_path), g.parse(buf.getvalue()), POLICY
    )
    assert problems == ["golden feed 1 takes 'state' from missing output 'nope'"]
