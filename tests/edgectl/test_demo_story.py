"""The full demo's premises, without processes: the canary's gate is fair, the summary honest.

The bad release must fail its golden data because its model learnt nothing, not because the
gate is out of reach: the sound model passes the same gate. (The demo itself runs end to end
in tests/e2e/test_demo.py.)
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edgefleet.agent import goldenset
from edgefleet.demo import canary, digits
from edgefleet.demo.story import Story


@pytest.fixture(scope="module")
def data() -> digits.DigitsData:
    return digits.load_data()


def judged(model: digits.TrainedModel, golden_npz: bytes) -> list[str]:
    """What the agent's golden check says about ``model`` on the canary's golden data."""
    arrays = np.load(io.BytesIO(golden_npz))
    session = ort.InferenceSession(model.onnx_bytes, providers=["CPUExecutionProvider"])
    (labels,) = session.run(["label"], {"pixels": arrays["pixels"]})
    return goldenset.compare(
        {"label": arrays["expected/label"]},
        {"label": np.asarray(labels)},
        max_abs_error=1e-4,
        min_agreement=canary.MIN_AGREEMENT,
    )


def test_the_canary_gate_passes_a_sound_model_and_stops_the_shuffled_one(
    data: digits.DigitsData,
) -> None:
    gate = canary.golden_npz(data)
    sound = digits.train(data, hidden=32, seed=0)
    assert judged(sound, gate) == []
    bad = digits.train(canary.shuffled(data), hidden=32, seed=3, max_iter=50)
    assert bad.accuracy < 0.5
    (problem,) = judged(bad, gate)
    assert "top-1 agreement" in problem


def test_the_summary_records_the_step_that_failed(tmp_path: Path) -> None:
    story = Story(tmp_path)
    story.begin("train")
    story.record("train", "digits v1", accuracy=0.97)
    story.begin("compress")
    story.fail("no candidate passed the gate")
    path = story.write(elapsed_s=1.0)
    summary = json.loads(path.read_text())
    assert summary["ok"] is False
    assert summary["failed"] == "compress: no candidate passed the gate"
    assert [(s["step"], s["ok"]) for s in summary["steps"]] == [
        ("train", True),
        ("compress", False),
    ]
    assert summary["facts"]["train"] == {"accuracy": 0.97}
    assert summary["artifacts"] == [str(path)]
