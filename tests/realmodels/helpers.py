"""What the real-model tests (and ``bench/realmodels.py``) share: upload in large chunks,
compress with a time budget, release, deploy to real agents (``canary``: one device, then the
other, two in-process ``edgefleet.agent`` agents on a real broker), Predict on each device
checked against ONNX Runtime run on the deployed model, and the agents' events read through
the controller."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from edgefleet.common import wire
from edgefleet.common.artifacts import BlobStore
from edgefleet.v1 import controller_pb2 as pb
from tests.agent.helpers import predict
from tests.conftest import Broker
from tests.controller import support
from tests.controller.test_compressed_release import real_agent

DEADLINE = 300.0


def npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def upload(ctl: support.Running, name: str, model: bytes) -> pb.RegisteredModel:
    return support.upload(ctl.stub, name, model, chunk=1 << 20)


def release(
    ctl: support.Running, name: str, version: str, *, model_version: int = 0, golden: bytes = b""
) -> pb.ReleaseInfo:
    ctl.stub.InitKey(pb.InitKeyRequest(), timeout=DEADLINE)
    return ctl.stub.CreateRelease(
        pb.CreateReleaseRequest(
            name=name, version=version, model_version=model_version, golden=golden
        ),
        timeout=DEADLINE,
    )


def deploy(ctl: support.Running, release: str, fleet: str) -> pb.RolloutInfo:
    """Deploy and wait for the rollout to succeed (fails with the rollout's reason)."""
    answer = ctl.stub.Deploy(pb.DeployRequest(release=release, fleet=fleet), timeout=DEADLINE)
    return support.wait_phase(ctl.stub, answer.rollout_id, "succeeded", timeout=120)


def event(ctl: support.Running, device_id: str, kind: str, release: str) -> str:
    """The message of the device's newest ``kind`` event for ``release``, once it arrived."""

    def probe() -> str | None:
        events = ctl.stub.ListEvents(
            pb.ListEventsRequest(device_id=device_id, limit=100), timeout=DEADLINE
        ).events
        found = [e.message for e in events if e.kind == kind and e.release == release]
        return found[-1] if found else None

    return support.eventually(probe, timeout=30, what=f"{kind} of {release} on {device_id}")


def compress(
    ctl: support.Running,
    name: str,
    eval_data: dict[str, np.ndarray],
    *,
    recipe: str,
    max_drop: float,
    budget_s: float,
    metric: str = "",
) -> tuple[pb.CompressResult, dict[str, Any]]:
    """CompressModel on the newest version of ``name`` (objective ``size``: the speed of int8
    kernels depends on the CPU, size does not); the result and its report."""
    request = pb.CompressRequest(
        name=name,
        recipe=recipe,
        eval_data=npz(**eval_data),
        max_accuracy_drop=max_drop,
        search_objective=pb.OBJECTIVE_SIZE,
        time_budget_s=budget_s,
        metric=metric,
    )
    result = list(ctl.stub.CompressModel(request, timeout=DEADLINE))[-1].result
    return result, json.loads(result.report_json)


@dataclass(frozen=True)
class Shipped:
    """What a canary deploy to two real agents and Predict on each of them gave."""

    rollout: pb.RolloutInfo | None  # None: the rollout did not succeed (``why``)
    devices: tuple[str, ...]
    predict_error: dict[str, float]  # per device: the largest |Predict - ONNX Runtime|
    tolerance: float
    why: str = ""

    @property
    def deployed(self) -> bool:
        """The canary rollout succeeded, on both devices."""
        return self.rollout is not None and len(self.rollout.devices) == len(self.devices)

    @property
    def predict_matches(self) -> bool:
        errors = self.predict_error.values()
        return len(errors) == len(self.devices) and all(e <= self.tolerance for e in errors)


def canary_to_two_agents(
    ctl: support.Running,
    broker: Broker,
    tmp_path: Path,
    release: str,
    digest: str,
    probe: dict[str, np.ndarray],
    *,
    tolerance: float = 1e-4,
) -> Shipped:
    """Deploy ``release`` (whose model is blob ``digest``) with ``--strategy canary --canary 1
    --waves 100%`` to a new fleet of two real agents, wait for the rollout to succeed, then
    Predict ``probe`` on each device and compare every output with ONNX Runtime running the
    model itself (``tolerance``: the largest absolute difference that matches). Never raises
    for a rollout that fails: ``Shipped.why`` says what happened."""
    fleet = support.unique("fleet")
    model = BlobStore(ctl.controller.settings.blobs_dir).read(digest)
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    want = dict(zip(names, session.run(None, probe), strict=True))
    with contextlib.ExitStack() as stack:
        agents = [stack.enter_context(real_agent(ctl, broker, tmp_path, fleet=fleet)) for _ in "ab"]
        devices = tuple(agent.device_id for agent, _ in agents)
        strategy = pb.RolloutStrategy(
            strategy_kind=pb.STRATEGY_KIND_CANARY, canary="1", waves="100%", bake="1s"
        )
        answer = ctl.stub.Deploy(
            pb.DeployRequest(release=release, fleet=fleet, strategy=strategy), timeout=DEADLINE
        )
        try:
            info = support.wait_phase(ctl.stub, answer.rollout_id, "succeeded", timeout=180)
        except AssertionError as exc:
            return Shipped(None, devices, {}, tolerance, why=str(exc))
        errors: dict[str, float] = {}
        for agent, endpoint in agents:
            reply = predict(endpoint, probe)
            got = {o.name: wire.array_from_pb(o) for o in reply.outputs}
            if set(got) != set(want) or any(got[k].shape != want[k].shape for k in want):
                return Shipped(info, devices, errors, tolerance, why=f"outputs {sorted(got)}")
            errors[agent.device_id] = max(
                float(np.max(np.abs(got[k].astype(np.float64) - want[k]), initial=0.0))
                for k in want
            )
        return Shipped(info, devices, errors, tolerance)


@dataclass(frozen=True)
class WholePath:
    result: pb.CompressResult
    report: dict[str, Any]
    release: str
    shipped: Shipped


def whole_path(
    ctl: support.Running,
    broker: Broker,
    tmp_path: Path,
    model: bytes,
    eval_data: dict[str, np.ndarray],
    probe: dict[str, np.ndarray],
    *,
    name: str,
    recipe: str,
    max_drop: float,
    budget_s: float = 60.0,
    metric: str = "",
) -> WholePath:
    """Upload ``model``, compress it with a time budget, release the winner (with the golden
    data the search attached; the original when no candidate won), canary-deploy the release
    to two real agents and Predict ``probe`` on both, against ONNX Runtime on that model (the
    same bytes on the same runtime: only the order of float sums may differ, hence 1e-4)."""
    name = support.unique(name)
    original = upload(ctl, name, model)
    result, report = compress(
        ctl, name, eval_data, recipe=recipe, max_drop=max_drop, budget_s=budget_s, metric=metric
    )
    shipped_model = result.model if result.passed else original
    version = "2.0.0" if result.passed else "1.0.0"
    release(ctl, name, version, model_version=shipped_model.version)
    shipped = canary_to_two_agents(
        ctl, broker, tmp_path, f"{name}:{version}", shipped_model.digest, probe
    )
    return WholePath(result, report, f"{name}:{version}", shipped)
