"""Unstructured and structured pruning, low-rank factorisation and weight clustering."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from edgefleet.controller.compress import clustering, graphs, lowrank, pruning, structured
from edgefleet.controller.compress.errors import InvalidInputError, PassSkippedError
from edgefleet.controller.compress.evaluating import reference, score
from edgefleet.controller.compress.timing import LocalTimer

from . import models


def _weights(data: bytes) -> dict[str, np.ndarray]:
    proto = onnx.load_model_from_string(data)
    return {t.name: graphs.array(t) for t in proto.graph.initializer}


@pytest.mark.parametrize("scope", list(pruning.Scope))
def test_magnitude_pruning_reaches_the_target_sparsity(cnn, cnn_eval, scope) -> None:
    out = pruning.prune_magnitude(cnn.onnx_bytes, sparsity=0.6, scope=scope)
    w = _weights(out.model)
    assert out.record.stats["sparsity"] == pytest.approx(0.6, abs=0.01)
    if scope is pruning.Scope.LAYER:  # every layer alike: the tiny conv1 suffers most
        for name in ("conv1.w", "conv2.w", "fc1.w"):
            assert (w[name] == 0).mean() == pytest.approx(0.6, abs=0.01)
    else:  # global: the large fc1 gives up more than the small convolutions
        assert (w["fc1.w"] == 0).mean() > (w["conv1.w"] == 0).mean()
        assert score(out.model, cnn_eval, reference(cnn.onnx_bytes, cnn_eval)).drop <= 1.0
    with pytest.raises(InvalidInputError, match="sparsity"):
        pruning.prune_magnitude(cnn.onnx_bytes, sparsity=1.5)


def test_structured_pruning_removes_channels_and_rewires(cnn, cnn_eval, cnn_cal) -> None:
    out = structured.prune_structured(cnn.onnx_bytes, amount=0.5, calibration=cnn_cal)
    w = _weights(out.model)
    assert w["conv1.w"].shape == (8, 1, 3, 3)
    assert w["conv2.w"].shape == (16, 8, 3, 3)  # its inputs follow conv1's removed channels
    assert w["fc1.w"].shape == (16 * 64, 32)  # Flatten -> Gemm rows removed per channel
    assert w["fc2.w"].shape == (32, 10)  # the class scores stay
    assert any("fc2 kept whole" in n for n in out.record.notes)
    stats = out.record.stats
    assert stats["macs_after"] < 0.3 * stats["macs_before"]
    assert score(out.model, cnn_eval, reference(cnn.onnx_bytes, cnn_eval)).drop <= 1.0


def test_structured_pruning_makes_the_model_faster(cnn, cnn_cal) -> None:
    out = structured.prune_structured(cnn.onnx_bytes, amount=0.5, calibration=cnn_cal)
    feed = {"pixels": cnn_cal[0]["pixels"][:64]}
    timer = LocalTimer(warmup=3, repeats=15)
    before = min(timer.measure(cnn.onnx_bytes, feed, threads=1).p50_ms for _ in range(2))
    after = min(timer.measure(out.model, feed, threads=1).p50_ms for _ in range(2))
    assert after < before


def test_structured_pruning_without_data_uses_filter_norms(digits_model) -> None:
    out = structured.prune_structured(digits_model.onnx_bytes, amount=0.25)
    assert out.record.params["reconstruct"] is False
    assert _weights(out.model)["w1"].shape == (64, 24)


def test_structured_pruning_skips_what_it_cannot_rewire() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(PassSkippedError, match=r"grouped/depthwise Conv|model output"):
        structured.prune_structured(models.depthwise(rng), amount=0.5)
    with pytest.raises(PassSkippedError, match="no prunable layer"):
        structured.prune_structured(models.einsum_only(rng), amount=0.5)


def test_lowrank_by_energy_and_by_budget(cnn, cnn_eval) -> None:
    out = lowrank.factorise_lowrank(cnn.onnx_bytes, energy=0.8)
    assert [c.layer for c in out.record.layers] == ["fc1"]
    w = _weights(out.model)
    rank = w["fc1.lr_a"].shape[1]
    assert w["fc1.lr_a"].shape == (2048, rank) and w["fc1.lr_b"].shape == (rank, 64)
    assert len(out.model) < len(cnn.onnx_bytes)
    ref = reference(cnn.onnx_bytes, cnn_eval)
    chosen = lowrank.factorise_by_budget(
        cnn.onnx_bytes, lambda m: score(m, cnn_eval, ref).drop <= 1.0
    )
    assert chosen.record.params["chosen_by"] == "accuracy budget"
    assert score(chosen.model, cnn_eval, ref).drop <= 1.0
    with pytest.raises(PassSkippedError, match="lowrank"):
        lowrank.factorise_lowrank(models.einsum_only(np.random.default_rng(0)), energy=0.9)


def test_clustering_leaves_two_to_the_bits_values_and_keeps_zeros(cnn, cnn_eval) -> None:
    pruned = pruning.prune_magnitude(cnn.onnx_bytes, sparsity=0.5)
    out = clustering.cluster_weights(pruned.model, bits=4)
    w = _weights(out.model)
    for name in ("conv2.w", "fc1.w"):
        assert len(np.unique(w[name])) <= 16
        assert 0.0 in w[name]
    assert (w["fc1.w"] == 0).mean() >= 0.5
    assert score(out.model, cnn_eval, reference(cnn.onnx_bytes, cnn_eval)).drop <= 2.0
