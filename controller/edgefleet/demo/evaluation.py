"""Scoring a device: the digits test set through its Predict API, one sample per request.

Accuracy says the device runs the model it should (it must equal the trained model's own
accuracy); the per-request round trips give the latency percentiles of the summary.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edgefleet.demo.errors import DemoFailed
from edgefleet.edgectl.inference import InferenceClient


@dataclass(frozen=True)
class Score:
    device_id: str
    release: str
    accuracy: float
    samples: int
    p50_ms: float
    p99_ms: float

    def matches(self, expected_accuracy: float) -> bool:
        """Equal to ``expected_accuracy`` up to one sample (float32 vs float64 near-ties)."""
        return abs(self.accuracy - expected_accuracy) <= 1.0 / self.samples + 1e-9


def score(
    client: InferenceClient,
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    *,
    device_id: str,
) -> Score:
    correct = 0
    releases: set[str] = set()
    latencies = np.empty(len(x), dtype=np.float64)
    for i in range(len(x)):
        start = time.perf_counter()
        result = client.predict({"pixels": x[i : i + 1]}, output_names=("label",))
        latencies[i] = time.perf_counter() - start
        labels = result.outputs.get("label")
        if labels is None or labels.shape != (1,):
            raise DemoFailed(f"{device_id} answered without a label for one sample")
        correct += int(labels[0] == y[i])
        releases.add(result.release)
    return Score(
        device_id=device_id,
        release=",".join(sorted(releases)),
        accuracy=correct / len(x),
        samples=len(x),
        p50_ms=float(np.percentile(latencies, 50) * 1e3),
        p99_ms=float(np.percentile(latencies, 99) * 1e3),
    )
