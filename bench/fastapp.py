"""The app side of ``bench/predict.py``'s fast-path rows: an app process of its own.

An app that calls the agent's fast local path holds a ``FastPathClient`` and nothing of gRPC's
(no server, no channel, so none of their threads take the GIL from it). ``bench/predict.py``
starts this as ``python bench/fastapp.py SOCKET PICTURE EXPECTED`` (the agent's fast socket, the
1x3x224x224 input and the answer every path must give, as ``.npy`` files), then drives it over
stdin and stdout, one JSON line each way:

* after start-up: ``{"ready": [path names]}``, once every path has given the expected answer
  (or ``{"error": ...}`` and exit 1);
* for ``{"path": NAME, "n": N}``: ``{"samples": [...]}``, N calls of that path timed here, in
  microseconds, as ``predict.timed`` times the paths that run in the bench's own process.

The paths (described in ``bench/predict.py``): ``uds`` (the tensor inline), ``shm`` (a
registered region, the client's default), ``shm_sealed``, ``shm_inplace`` (``lease``) and
``shm_named``. Only numpy and ``edgefleet.common`` are imported, as an app would.
It has no ``main``: ``bench/run.py`` runs the modules that define one, and this is a helper
of ``predict``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgefleet.common import fastpath, sharedmem, wire
from edgefleet.v1 import inference_pb2

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
from timing import timed  # noqa: E402


def decoded(reply: inference_pb2.PredictResponse) -> dict[str, np.ndarray]:
    return {t.name: wire.array_from_pb(t) for t in reply.outputs}


def answer(message: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def run_app(socket_path: str, picture_file: str, expected_file: str) -> int:
    picture = np.load(picture_file)
    expected = np.load(expected_file)
    feed = {"image": picture}
    stager = sharedmem.Stager()
    with fastpath.FastPathClient(socket_path) as fast:
        lease = fast.lease({"image": (picture.shape, picture.dtype)})
        lease.arrays["image"][...] = picture  # the app's own writes, once

        def sealed() -> dict[str, np.ndarray]:
            with stager.sealed_request(feed) as (staged, fds):
                return decoded(fast.predict(staged, fds=fds))

        def named() -> dict[str, np.ndarray]:
            with stager.request(feed) as staged:
                return decoded(fast.predict(staged))

        paths: dict[str, Callable[[], dict[str, np.ndarray]]] = {
            "uds": lambda: decoded(fast.call(fastpath.request_parts(feed))),
            "shm": lambda: decoded(fast.predict_arrays(feed)),
            "shm_sealed": sealed,
            "shm_inplace": lambda: decoded(lease.predict()),
            "shm_named": named,
        }
        try:
            for name, call in paths.items():  # the same answer by every path
                got = call()["probabilities"]
                if got.tobytes() != expected.tobytes():
                    answer({"error": f"{name} answered {got.tolist()}, not {expected.tolist()}"})
                    return 1
            answer({"ready": list(paths)})
            for line in sys.stdin:
                asked = json.loads(line)
                answer({"samples": timed(paths[asked["path"]], int(asked["n"]))})
        finally:
            lease.close()
            stager.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(run_app(*sys.argv[1:4]))
