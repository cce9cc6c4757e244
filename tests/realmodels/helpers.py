"""What the real-model tests share: upload in large chunks, release, deploy to a real agent
and read the agent's events through the controller."""

from __future__ import annotations

import io

import numpy as np

from edgefleet.v1 import controller_pb2 as pb
from tests.controller import support

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
