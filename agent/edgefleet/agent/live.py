"""Live Predict outcomes of the release in its health window, for ``watching`` to judge.

The servicer calls ``record``/``runtime_error`` for every request; they keep something only
while a release is watched and the request was served by that release (one attribute read
otherwise). ``record`` takes no lock: the watched release and its latencies are one tuple,
swapped whole by ``watch``, so a sample lands in the deque of the release that served it (or
in a dropped one), and ``deque.append`` is atomic under the GIL. Runtime errors are failures
of ONNX Runtime on input that fit the model (``InferenceFailedError``), never a caller's bad
input.
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
        # (release, its latencies); release "" = not watching
        self._watched: tuple[str, deque[float]] = ("", deque(maxlen=MAX_SAMPLES))
        self._errors = 0
        self._last_error = ""

    def watch(self, release: str) -> None:
        """Start collecting for ``release`` afresh."""
        with self._lock:
            self._watched = (release, deque(maxlen=MAX_SAMPLES))
            self._errors, self._last_error = 0, ""

    def stop(self) -> None:
        self.watch("")

    def record(self, release: str, seconds: float) -> None:
        watched = self._watched  # one read: the release and its deque belong together
        if release == watched[0] and release:
            watched[1].append(seconds)

    def runtime_error(self, release: str, message: str) -> None:
        if release != self._watched[0] or not release:
            return
        with self._lock:
            if release == self._watched[0]:
                self._errors += 1
                self._last_error = message

    def take(self) -> LiveSample:
        """What was collected since the last ``take`` (latencies stay: they cover the window)."""
        with self._lock:
            latencies = self._watched[1]
            sample = LiveSample(tuple(latencies), self._errors, self._last_error)
            self._errors = 0
        return sample
