"""Calling an agent's ``InferenceService`` and reading the tensors a person hands to it.

``InferenceClient`` is what ``edgectl predict`` and ``edgectl demo`` use; tensors travel as
``common_pb2.Tensor`` through ``edgefleet.common.wire``. Errors leave as ``RpcFailed`` (one
line; an agent's INVALID_ARGUMENT names the tensor) or ``InvalidInputError`` for a bad file.
An endpoint of ``unix:PATH`` (the agent's ``--predict-socket``) is the local path: inputs of at
least ``shm_threshold`` bytes then travel through POSIX shared memory (``sharedmem``).
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import numpy.typing as npt

from edgefleet.common import rpc, sharedmem, wire
from edgefleet.common.closing import Closing
from edgefleet.common.errors import InvalidInputError
from edgefleet.v1 import inference_pb2, inference_pb2_grpc

Array = npt.NDArray[np.generic]


@dataclass(frozen=True)
class Prediction:
    outputs: dict[str, Array]
    release: str
    device_id: str


class InferenceClient(Closing):
    def __init__(
        self,
        endpoint: str,
        *,
        name: str = "",
        deadline_s: float = rpc.DEFAULT_DEADLINE_S,
        shm_threshold: int | None = sharedmem.DEFAULT_THRESHOLD,
    ) -> None:
        self.endpoint = endpoint
        self._stager = sharedmem.stager_for(endpoint, threshold=shm_threshold)
        self.deadline_s = deadline_s
        self._what = f"{name} at {endpoint}" if name else f"agent at {endpoint}"
        self._channel = rpc.channel(endpoint)
        self._stub = inference_pb2_grpc.InferenceServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()
        if self._stager is not None:
            self._stager.close()

    def predict(
        self, inputs: Mapping[str, Array], *, output_names: Sequence[str] = ()
    ) -> Prediction:
        try:
            if self._stager is not None:
                with self._stager.request(inputs, output_names=output_names) as staged:
                    reply = self._stub.Predict(staged, timeout=self.deadline_s)
            else:
                request = inference_pb2.PredictRequest(
                    inputs=[wire.array_to_pb(name, a) for name, a in inputs.items()],
                    output_names=list(output_names),
                )
                reply = self._stub.Predict(request, timeout=self.deadline_s)
        except grpc.RpcError as exc:
            raise rpc.error_from_rpc(exc, target=self._what) from None
        return Prediction(
            outputs={t.name: wire.array_from_pb(t) for t in reply.outputs},
            release=reply.release,
            device_id=reply.device_id,
        )

    def model_info(self) -> inference_pb2.ModelInfoResponse:
        try:
            return self._stub.ModelInfo(inference_pb2.ModelInfoRequest(), timeout=self.deadline_s)
        except grpc.RpcError as exc:
            raise rpc.error_from_rpc(exc, target=self._what) from None


def load_npz(path: Path) -> dict[str, Array]:
    """Every array in an ``.npz`` file, by name; object arrays are refused (no pickles)."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InvalidInputError(f"no such file: {path}") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise InvalidInputError(f"{path}: not a readable .npz file ({exc})") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise InvalidInputError(f"{path}: a single array, not an .npz archive of named arrays")
    with loaded:
        try:
            arrays = {name: np.asarray(loaded[name]) for name in loaded.files}
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise InvalidInputError(f"{path}: cannot read its arrays ({exc})") from None
    if not arrays:
        raise InvalidInputError(f"{path}: holds no arrays")
    return arrays
