"""Eval data as a list of feeds in the model's own shapes (unbatched inputs, a scalar sample
rate, a different length per feed), and recurrent chains (``--carry state=stateN``): the
original's states fill the stream when it is loaded, each candidate is scored on its own."""

from __future__ import annotations

import io

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefleet.common import feeds
from edgefleet.controller.compress import graphs
from edgefleet.controller.compress.errors import InvalidInputError
from edgefleet.controller.compress.evaluating import load_eval_set, reference, score

CARRY = (("state", "stateN"),)


def recurrent(*, scale: float = 1.0) -> bytes:
    """A silero-vad-like streaming model: ``x`` [L, 16] (no batch axis, any length), ``sr`` a
    scalar int64, ``state`` [2, 1, 8] in; ``stateN`` = tanh(state / 2 + mean(relu(x @ W1) @
    W2)) and ``y`` [1, 8] = mean(stateN) + sr / 1e5 out (W1 [16, 512]: int8 makes it smaller)."""
    rng = np.random.default_rng(7)
    w1 = rng.standard_normal((16, 512)).astype(np.float32) * scale / 4
    w2 = rng.standard_normal((512, 8)).astype(np.float32) / 16
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["hidden"]),
            helper.make_node("Relu", ["hidden"], ["act"]),
            helper.make_node("MatMul", ["act", "w2"], ["proj"]),
            helper.make_node("ReduceMean", ["proj"], ["pooled"], axes=[0], keepdims=1),
            helper.make_node("Mul", ["state", "half"], ["decayed"]),
            helper.make_node("Add", ["decayed", "pooled"], ["pre"]),
            helper.make_node("Tanh", ["pre"], ["stateN"]),
            helper.make_node("ReduceMean", ["stateN"], ["m"], axes=[0], keepdims=0),
            helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["srf", "tiny"], ["srs"]),
            helper.make_node("Add", ["m", "srs"], ["y"]),
        ],
        "recurrent",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["L", 16]),
            helper.make_tensor_value_info("sr", TensorProto.INT64, []),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, 1, 8]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8]),
            helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, 1, 8]),
        ],
        [
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(w2, "w2"),
            numpy_helper.from_array(np.array(0.5, np.float32), "half"),
            numpy_helper.from_array(np.array(1e-5, np.float32), "tiny"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def stream(count: int = 6, *, seed: int = 0, length: int = 5) -> list[dict[str, np.ndarray]]:
    """Feeds of ``x`` [L, 16] (L varies), ``sr`` 16000; the first feed also gives ``state``."""
    rng = np.random.default_rng(seed)
    out: list[dict[str, np.ndarray]] = []
    for i in range(count):
        feed: dict[str, np.ndarray] = {
            "x": rng.standard_normal((length + i % 3, 16)).astype(np.float32),
            "sr": np.array(16000, np.int64),
        }
        if i == 0:
            feed["state"] = np.zeros((2, 1, 8), np.float32)
        out.append(feed)
    return out


def to_npz(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def _by_hand(model: bytes, given: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    sess = graphs.session(model)
    state = given[0]["state"]
    outs = []
    for feed in given:
        y, state_n = sess.run(["y", "stateN"], {"x": feed["x"], "sr": feed["sr"], "state": state})
        outs.append([y, state_n])
        state = state_n
    return outs


def test_feeds_run_as_one_stream_with_each_models_own_carried_state() -> None:
    model, given = recurrent(), stream()
    ev = load_eval_set(to_npz(feeds.join(given)), model=model, carry=CARRY)
    assert ev.per_feed and ev.size == 6 and ev.carry == CARRY
    assert [b["x"].shape[0] for b in ev.batches] == [5, 6, 7, 5, 6, 7]  # lengths per feed
    assert all(b["sr"].ndim == 0 for b in ev.batches)  # a scalar stays a scalar
    want = _by_hand(model, given)
    for k in range(1, 6):  # the original's state, filled in for calibration and timing
        np.testing.assert_array_equal(ev.batches[k]["state"], want[k - 1][1])
    ref = reference(model, ev)
    assert score(model, ev, ref).drop == pytest.approx(0.0, abs=1e-9)

    other = recurrent(scale=1.3)  # a candidate: its own states go round, not the original's
    sess = graphs.session(other)
    got = ev.run(sess, ["y", "stateN"])
    for mine, theirs in zip(got, _by_hand(other, given), strict=True):
        np.testing.assert_allclose(mine[0], theirs[0], rtol=1e-6)
    assert score(other, ev, ref).drop > 0
    assert ev.head(2).size == 2 and len(ev.head(2).batches) == 2


def test_a_later_feed_that_gives_the_state_starts_a_new_stream() -> None:
    model, given = recurrent(), stream(4)
    given[2]["state"] = np.ones((2, 1, 8), np.float32)
    ev = load_eval_set(to_npz(feeds.join(given)), model=model, carry=CARRY)
    assert ev.fresh == {2}
    np.testing.assert_array_equal(ev.batches[2]["state"], given[2]["state"])


def test_feeds_with_labels_gaps_or_missing_inputs_are_refused_in_words() -> None:
    model, given = recurrent(), stream(3)
    with pytest.raises(InvalidInputError, match="names inputs"):  # no --carry: state missing
        load_eval_set(to_npz(feeds.join(given)), model=model)
    gap = feeds.join(given[:1]) | {feeds.key(2, k): v for k, v in given[1].items()}
    with pytest.raises(InvalidInputError, match="without gaps"):
        load_eval_set(to_npz(gap), model=model, carry=CARRY)
    with pytest.raises(InvalidInputError, match="outside any feed"):
        load_eval_set(to_npz(feeds.join(given) | {"x": given[0]["x"]}), model=model)
    with pytest.raises(InvalidInputError, match="must be an input"):
        load_eval_set(to_npz(feeds.join(given)), model=model, carry=(("state", "nope"),))
    with pytest.raises(feeds.FeedsError, match="INPUT=OUTPUT"):
        feeds.parse_carry(["state"])


def test_the_batched_layout_still_loads_and_a_carry_runs_its_samples_in_order() -> None:
    from tests.compress.test_metrics import stateful

    x = np.arange(24, dtype=np.float32).reshape(6, 4)
    data = to_npz(
        {"x": x, "gain": np.array(2.0, np.float32), "broadcast/state": np.zeros((2, 1, 4))}
    )
    with pytest.raises(InvalidInputError):  # float64 state: the model takes float32
        load_eval_set(data, model=stateful())
    data = to_npz(
        {
            "x": x,
            "gain": np.array(2.0, np.float32),
            "broadcast/state": np.zeros((2, 1, 4), np.float32),
        }
    )
    ev = load_eval_set(data, model=stateful(), carry=CARRY)
    assert len(ev.batches) == 6 and float(ev.batches[5]["state"].max()) == 5.0  # +1 a step


def test_static_quantization_calibrates_on_feeds_of_different_lengths() -> None:
    from edgefleet.controller.compress.searching import Objective, search
    from edgefleet.controller.compress.timing import LocalTimer
    from edgefleet.controller.compress.winnergolden import GoldenMode

    model = recurrent()
    ev = load_eval_set(to_npz(feeds.join(stream(8, length=50))), model=model, carry=CARRY)
    result = search(
        model,
        ev,
        recipe="int8-static,int8-static-entropy",
        max_drop=20,
        objective=Objective.SIZE,
        timer=LocalTimer(),
        golden=GoldenMode.ALWAYS,
    )
    assert [c.verdict for c in result.candidates] == ["passes", "passes"], result.candidates
    assert result.golden is not None and result.golden.rows == 8  # golden feeds, one per feed
