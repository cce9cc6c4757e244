"""A user's own metric (``--metric-module``), run where it can do no harm.

The user's function ``score(reference, candidate) -> float`` takes the original's and the
candidate's outputs on the whole eval set (``dict[str, np.ndarray]``, each output's batches
joined on the first axis) and returns a score in [0, 1], higher is better (decoded text
equality, an F1 against the original's detections, ...).

Its source travels as text: ``edgectl`` reads the file and sends it in the ``CompressRequest``;
the controller never imports, compiles or parses it. It is handed, as a string, to the
compression search in its sandbox child (``edgefleet.controller.sandbox``), and the search
starts one more process for it, ``_metric_worker`` (a fresh interpreter, started by path,
inheriting the sandbox child's limits, working directory and scrubbed environment), which
installs a seccomp filter before it compiles the source: the code can read no file, open no
socket, start no process and signal nobody. Arrays go in as an ``.npz`` without pickles and
only a JSON float comes back; the worker dies with its parent.
"""

from __future__ import annotations

import io
import json
import math
import os
import select
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from edgefleet.common.errors import InvalidInputError

_WORKER = Path(__file__).with_name("_metric_worker.py")
_ENV_KEEP = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")
MAX_SOURCE_BYTES = 256 * 1024
CALL_TIMEOUT_S = 300.0  # one call of the user's function (and the module's start)


@dataclass(frozen=True)
class MetricModule:
    """The user's metric as the request carried it: source text, the function's name, and
    where it came from (a file name, for messages)."""

    source: str
    function: str = "score"
    origin: str = "<metric-module>"

    def __str__(self) -> str:
        return f"{self.origin}:{self.function}"


def check(module: MetricModule) -> None:
    """What the controller checks itself, without parsing the source: sizes and names."""
    if not module.source.strip():
        raise InvalidInputError("--metric-module: the module's source is empty")
    if len(module.source.encode()) > MAX_SOURCE_BYTES:
        raise InvalidInputError(
            f"--metric-module: the source is over {MAX_SOURCE_BYTES // 1024} KiB"
        )
    if not module.function.isidentifier():
        raise InvalidInputError(
            f"--metric-module: {module.function!r} is not a Python function name"
        )


class MetricProcess:
    """The confined worker running one user metric; call it, ``close`` it when done."""

    def __init__(self, module: MetricModule, *, timeout_s: float = CALL_TIMEOUT_S) -> None:
        check(module)
        self.module = module
        self.timeout_s = timeout_s
        env = {k: v for k, v in os.environ.items() if k in _ENV_KEEP}
        env |= {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        self._proc = subprocess.Popen(
            [sys.executable, "-I", str(_WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
            cwd=Path.cwd(),
            close_fds=True,
        )
        try:
            reply = self._ask(
                json.dumps(
                    {"source": module.source, "function": module.function, "origin": module.origin}
                ).encode()
            )
        except BaseException:
            self.close()
            raise
        if "error" in reply:
            self.close()
            raise InvalidInputError(f"--metric-module {module}: {reply['error']}")

    def __call__(
        self, reference: Mapping[str, npt.NDArray[Any]], candidate: Mapping[str, npt.NDArray[Any]]
    ) -> float:
        buf = io.BytesIO()
        arrays = {f"reference/{k}": v for k, v in reference.items()}
        arrays |= {f"candidate/{k}": v for k, v in candidate.items()}
        np.savez(buf, **arrays)  # type: ignore[arg-type]
        reply = self._ask(buf.getvalue())
        if "error" in reply:
            raise InvalidInputError(f"--metric-module {self.module} failed: {reply['error']}")
        value = reply.get("score")
        if not isinstance(value, float | int) or not math.isfinite(value) or not 0 <= value <= 1:
            raise InvalidInputError(
                f"--metric-module {self.module} returned {value!r}: a score must be in [0, 1]"
            )
        return float(value)

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        for pipe in (self._proc.stdin, self._proc.stdout):
            if pipe is not None:
                pipe.close()
        self._stderr.close()

    def __enter__(self) -> MetricProcess:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _ask(self, payload: bytes) -> dict[str, Any]:
        stdin, stdout = self._proc.stdin, self._proc.stdout
        assert stdin is not None and stdout is not None
        deadline = time.monotonic() + self.timeout_s
        try:
            stdin.write(struct.pack(">Q", len(payload)) + payload)
            stdin.flush()
            fd = stdout.fileno()
            (size,) = struct.unpack(">Q", _read(fd, 8, deadline))
            reply = json.loads(_read(fd, size, deadline))
        except TimeoutError:
            self.close()
            raise InvalidInputError(
                f"--metric-module {self.module}: no answer within {self.timeout_s:g} s"
            ) from None
        except (BrokenPipeError, EOFError, ValueError):
            raise InvalidInputError(
                f"--metric-module {self.module}: the metric process died ({self._death()})"
            ) from None
        if not isinstance(reply, dict):
            raise InvalidInputError(f"--metric-module {self.module}: a garbled reply")
        return reply

    def _death(self) -> str:
        if self._stderr.closed:
            return "stopped"
        try:
            code = self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            code = self._proc.wait()
        self._stderr.seek(0)
        tail = self._stderr.read()[-2000:].decode(errors="replace").strip()
        status = f"signal {-code}" if code < 0 else f"status {code}"
        return f"{status}: {tail.splitlines()[-1]}" if tail else status


def _read(fd: int, count: int, deadline: float) -> bytes:
    """Exactly ``count`` bytes from the raw pipe ``fd``; ``TimeoutError`` past ``deadline``,
    ``EOFError`` when the worker closed it first."""
    chunks: list[bytes] = []
    left = count
    while left:
        wait = deadline - time.monotonic()
        if wait <= 0 or not select.select([fd], [], [], wait)[0]:
            raise TimeoutError
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
