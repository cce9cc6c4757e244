"""Live Predict outcomes of the release in its health window, for ``watching`` to judge.

The servicer calls ``record``/``runtime_error`` for every request; they keep something only
while a release is watched and the request was served by that release (one attribute read
otherwise). Runtime errors are failures of ONNX Runtime on input that fit the model
(``InferenceFailedError``), never a caller's bad input.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

MAX_SAMPLES = 10_000


@dataclass(frozen=True)
class LiveSample:
    latencies_s: tuple[float, ...]
    runtime_errors: int
    last_error: str


class LiveStats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._release = ""  # "" = not watching
        self._latencies: deque[float] = deque(maxlen=MAX_SAMPLES)
        self._errors = 0
        self._last_error = ""

    def watch(self, release: str) -> None:
        """Start collecting for ``release`` afresh."""
        with self._lock:
            self._release = release
            self._latencies.clear()
            self._errors, self._last_error = 0, ""

    def stop(self) -> None:
        self.watch("")

    def record(self, release: str, seconds: float) -> None:
        if release != self._release or not release:
            return
        with self._lock:
            if release == self._release:
                self._latencies.append(seconds)

    def runtime_error(self, release: str, message: str) -> None:
        if release != self._release or not release:
            return
        with self._lock:
            if release == self._release:
                self._errors += 1
                self._last_error = message

    def take(self) -> LiveSample:
        """What was collected since the last ``take`` (latencies stay: they cover the window)."""
        with self._lock:
            sample = LiveSample(tuple(self._latencies), self._errors, self._last_error)
            self._errors = 0
        return sample
