"""The per-output metrics on constructed arrays (IoU, sequence agreement with and without CTC,
cosine), their parsing, the auto rules by shape and values, and a user's metric module run in
its confined process (it can compute, but can read no file and start no process)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefleet.controller.compress.errors import InvalidInputError
from edgefleet.controller.compress.evaluating import (
    EvalSet,
    Metric,
    MetricChoice,
    cosine,
    decode,
    iou,
    parse_metric,
    parse_metrics,
    reference,
    score,
    sequence_agreement,
)
from edgefleet.controller.compress.metric_hook import MetricModule, MetricProcess
from edgefleet.controller.compress.searching import Objective, search


def _identity(shape: list[str | int], *, op: str = "Identity", **attrs: Any) -> bytes:
    """y = op(x) for a float input of ``shape``."""
    graph = helper.make_graph(
        [helper.make_node(op, ["x"], ["y"], **attrs)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def test_iou_binarises_both_at_the_threshold_over_the_whole_batch() -> None:
    ref = np.array([[0.9, 0.8, 0.1, 0.0]], np.float32)
    cand = np.array([[0.9, 0.2, 0.7, 0.0]], np.float32)
    assert iou([(ref, cand)]) == pytest.approx(1 / 3)  # {0,1} vs {0,2}
    assert iou([(ref, cand)], 0.05) == pytest.approx(3 / 3)  # {0,1,2} both
    assert iou([(ref, cand), (ref, ref)]) == pytest.approx((1 + 2) / (3 + 2))
    assert iou([(np.zeros(4), np.zeros(4))]) == 1.0  # nothing above: identical


def test_sequence_agreement_decodes_argmax_and_optionally_ctc() -> None:
    # [N=2, T=4, C=3] as one-hot scores
    def scores(ids: list[list[int]]) -> np.ndarray:
        out: np.ndarray = np.eye(3, dtype=np.float32)[np.array(ids)]
        return out

    ref = scores([[1, 1, 0, 2], [2, 0, 2, 2]])
    cand = scores([[1, 0, 1, 2], [2, 0, 2, 2]])  # row 0 differs frame by frame
    assert decode(ref, 2) == [(1, 1, 0, 2), (2, 0, 2, 2)]
    assert decode(ref, 2, ctc=True) == [(1, 2), (2, 2)]
    assert sequence_agreement([(ref, cand)], [2]) == 0.5
    # CTC: "1 1 _ 2" and "1 _ 1 2" decode to "1 2" and "1 1 2": still different
    assert sequence_agreement([(ref, cand)], [2], ctc=True) == 0.5
    same = scores([[1, 1, 1, 2], [2, 0, 2, 2]])  # "1 1 1 2" -> "1 2", as "1 1 _ 2"
    assert sequence_agreement([(ref, same)], [2]) == 0.5
    assert sequence_agreement([(ref, same)], [2], ctc=True) == 1.0
    # time first: [T=4, N=2, C=3]
    assert sequence_agreement([(ref.transpose(1, 0, 2), same.transpose(1, 0, 2))], [2]) == 0.5


def test_cosine_is_per_sample_and_averaged() -> None:
    ref = np.array([[1.0, 0.0], [0.0, 2.0]])
    cand = np.array([[1.0, 1.0], [0.0, 5.0]])
    assert cosine([(ref, cand)]) == pytest.approx((1 / np.sqrt(2) + 1.0) / 2)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("iou", MetricChoice(Metric.IOU)),
        ("mask=iou:0.3", MetricChoice(Metric.IOU, "mask", "0.3")),
        ("seq:ctc", MetricChoice(Metric.SEQUENCE, "", "ctc")),
        ("out:0=seq", MetricChoice(Metric.SEQUENCE, "out:0")),
    ],
)
def test_kinds_with_arguments_parse(text: str, want: MetricChoice) -> None:
    assert parse_metric(text) == want


def test_bad_arguments_and_repeated_outputs_are_refused() -> None:
    for text, message in [
        ("iou:high", "threshold must be a number"),
        ("seq:beam", "only 'ctc'"),
        ("cosine:2", "takes no argument"),
        ("y=iou,y=cosine", "more than once"),
    ]:
        with pytest.raises(InvalidInputError, match=message):
            parse_metrics(text)
    assert parse_metrics("") == ()
    assert parse_metrics("a=iou, b=top1") == (
        MetricChoice(Metric.IOU, "a"),
        MetricChoice(Metric.TOP1_AGREEMENT, "b"),
    )


def test_auto_picks_iou_for_probability_maps_and_seq_for_class_score_sequences() -> None:
    rng = np.random.default_rng(0)
    maps = rng.random((4, 1, 8, 8)).astype(np.float32)
    ref = reference(_identity(["n", 1, 8, 8]), EvalSet.from_arrays({"x": maps}))
    assert ref.score.metric is Metric.IOU and ref.score.label == "iou>0.5"
    logits = rng.standard_normal((4, 5, 6)).astype(np.float32)
    seq = reference(
        _identity(["n", 5, 6], op="Softmax", axis=-1), EvalSet.from_arrays({"x": logits})
    )
    assert seq.score.metric is Metric.SEQUENCE
    hidden = reference(_identity(["n", 5, 6]), EvalSet.from_arrays({"x": logits}))
    assert hidden.score.metric is Metric.COSINE  # 3-D floats without class-score semantics


def test_an_explicit_iou_threshold_scores_a_model_exactly() -> None:
    maps = np.array([[[[0.2, 0.4], [0.6, 0.8]]]], np.float32)  # [1, 1, 2, 2]
    model = _identity([1, 1, 2, 2])
    ev = EvalSet.from_arrays({"x": maps})
    ref = reference(model, ev, metric=parse_metrics("y=iou:0.3"))
    assert ref.score.label == "iou>0.3"
    got = score(model, ev, ref)
    assert (got.value, got.drop) == (1.0, 0.0)
    assert [(o.output, o.metric) for o in got.outputs] == [("y", "iou>0.3")]


USER_METRIC = '''
import numpy as np

def exact(reference, candidate):
    """The share of samples whose output is exactly the original's."""
    ref, cand = reference["y"], candidate["y"]
    return float(np.mean([np.array_equal(a, b) for a, b in zip(ref, cand)]))

def reads_files(reference, candidate):
    return float(len(open("/etc/hostname").read()) > 0)

def starts_processes(reference, candidate):
    import os
    return float(os.system("true") == 0)

def out_of_range(reference, candidate):
    return 2.0

def spins(reference, candidate):
    while True:
        pass
'''


def test_a_metric_module_runs_confined_and_scores(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    source = USER_METRIC + f'\n\ndef writes(reference, candidate):\n    open("{marker}", "w")\n'
    one = {"y": np.ones((4, 2))}
    half = {"y": np.array([[1, 1], [0, 1], [1, 1], [0, 0]], np.float64)}
    with MetricProcess(MetricModule(source, "exact", "m.py")) as fn:
        assert fn(one, one) == 1.0
        assert fn(one, half) == 0.5
    for function, message in [
        ("reads_files", "PermissionError"),
        ("writes", "PermissionError"),
        ("out_of_range", r"a score must be in \[0, 1\]"),
    ]:
        with (
            MetricProcess(MetricModule(source, function, "m.py")) as fn,
            pytest.raises(InvalidInputError, match=message),
        ):
            fn(one, one)
    assert not marker.exists()
    with MetricProcess(MetricModule(source, "starts_processes", "m.py")) as fn:
        assert fn(one, one) == 0.0  # os.system could not fork
    with (
        MetricProcess(MetricModule(source, "spins", "m.py"), timeout_s=1) as fn,
        pytest.raises(InvalidInputError, match="no answer within 1 s"),
    ):
        fn(one, one)
    with pytest.raises(InvalidInputError, match="defines no function 'nope'"):
        MetricProcess(MetricModule(source, "nope", "m.py"))
    with pytest.raises(InvalidInputError, match="SyntaxError"):
        MetricProcess(MetricModule("def (", "score", "m.py"))


def test_a_metric_module_judges_with_the_outputs_metrics() -> None:
    model = _identity(["n", 2])
    x = np.arange(8, dtype=np.float32).reshape(4, 2)
    ev = EvalSet.from_arrays({"x": x}, batch_size=2)
    with MetricProcess(MetricModule(USER_METRIC, "exact", "m.py")) as fn:
        ref = reference(model, ev, hook=fn)
        assert [(o.output, o.metric) for o in ref.score.outputs] == [
            ("*", "metric-module m.py:exact")
        ]
        got = score(model, ev, ref)
        assert (got.metric, got.value, got.drop) == (Metric.MODULE, 1.0, 0.0)
        both = reference(model, ev, metric=parse_metrics("y=cosine"), hook=fn)
        assert [o.metric for o in score(model, ev, both).outputs] == [
            "cosine-similarity",
            "metric-module m.py:exact",
        ]


def _two_outputs() -> bytes:
    """x [N, 64] -> emb = x @ W [N, 16] and probs = Softmax(emb @ V) [N, 10]."""
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((64, 16)) / 8).astype(np.float32)
    v = (rng.standard_normal((16, 10)) / 4).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["emb"]),
            helper.make_node("MatMul", ["emb", "v"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        ],
        "two",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
        [
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["n", 10]),
            helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["n", 16]),
        ],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(v, "v")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def test_a_search_judging_two_outputs_reports_each() -> None:
    x = np.random.default_rng(4).standard_normal((64, 64)).astype(np.float32)
    result = search(
        _two_outputs(),
        EvalSet.from_arrays({"x": x}),
        recipe="int8-dynamic",
        max_drop=50.0,
        objective=Objective.SIZE,
        metric=parse_metrics("probs=top1,emb=cosine"),
    )
    assert [(o.output, o.metric) for o in result.original.outputs] == [
        ("probs", "top1-agreement"),
        ("emb", "cosine-similarity"),
    ]
    (int8,) = result.candidates
    assert int8.drop == max(o.drop for o in int8.outputs)
    markdown = result.report_markdown()
    assert "Metric per output: `probs`: top1-agreement; `emb`: cosine-similarity" in markdown
    assert "| drop probs (top1-agreement) | drop emb (cosine-similarity) |" in markdown
    doc = json.loads(result.report_json())
    assert doc["metrics"] == {"probs": "top1-agreement", "emb": "cosine-similarity"}
    assert [o["output"] for o in doc["candidates"][0]["outputs"]] == ["probs", "emb"]
