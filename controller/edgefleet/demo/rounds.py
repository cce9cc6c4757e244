"""One round of the demo: register a trained model, release it, roll it out, score each device.

The same calls an operator makes with ``edgectl model add``, ``release create``, ``deploy``
and ``predict``, through the same client, progress view and convergence check.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path

from rich.console import Console

from edgefleet.common.types import ReleaseRef
from edgefleet.demo import digits
from edgefleet.demo.errors import DemoFailed
from edgefleet.demo.evaluation import Score, score
from edgefleet.edgectl import following
from edgefleet.edgectl.client import ControllerClient, file_chunks
from edgefleet.edgectl.inference import InferenceClient
from edgefleet.edgectl.output import phase_name, table
from edgefleet.edgectl.rollout_status import RolloutLive, device_table


def wait_registered(
    client: ControllerClient, fleet: str, ids: list[str], *, timeout_s: float
) -> None:
    """Wait until the controller lists every device (agents register over MQTT)."""
    deadline = time.monotonic() + timeout_s
    while True:
        known = {d.device_id for d in client.list_devices(fleet)}
        missing = sorted(set(ids) - known)
        if not missing:
            return
        if time.monotonic() >= deadline:
            raise DemoFailed(f"the controller never heard of {', '.join(missing)}")
        time.sleep(0.2)


class Round:
    def __init__(
        self,
        client: ControllerClient,
        console: Console,
        *,
        workdir: Path,
        fleet: str,
        ids: list[str],
        data: digits.DigitsData,
        endpoints: Mapping[str, str] | None = None,
        runtime: str = "",
        publish: Callable[[str], None] | None = None,
    ) -> None:
        """``endpoints``: each device's Predict to score it on (its local, plaintext one, as
        a local app's); default: the one the controller lists (with mTLS that is the peer
        listener, which serves only neighbours). ``runtime``: the releases' (``container``;
        "": in-process), each handed to ``publish`` once created (pushed to a registry)."""
        self.runtime = runtime
        self.publish = publish
        self.client = client
        self.console = console
        self.workdir = workdir
        self.fleet = fleet
        self.ids = ids
        self.data = data
        self.endpoints = dict(endpoints or {})

    def play(
        self, trained: digits.TrainedModel, *, name: str, version: str, timeout_s: float
    ) -> tuple[Score, ...]:
        ref = ReleaseRef(name, version)
        self.console.rule(f"release {ref}")
        path = self.workdir / "models" / f"{name}-{version}.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(trained.onnx_bytes)
        registered = self.client.upload_model(
            file_chunks(path), name=name, size=len(trained.onnx_bytes),
            description=f"digits MLP, {trained.hidden} hidden units",
        )  # fmt: skip
        self.console.print(
            f"registered model {registered.name} v{registered.version} ({registered.digest[:19]})"
        )
        release = self.client.create_release(
            name, version, model_version=registered.version, runtime=self.runtime
        )
        if self.publish is not None:
            self.publish(str(ref))
            self.console.print(
                f"pushed {ref}'s image {release.manifest.image[:19]} to the registry"
            )
        self.console.print(f"created release {ref}, signed by {release.key_id}")
        self.roll_out(ref, timeout_s=timeout_s)
        return self.score_all(ref, trained)

    def roll_out(self, ref: ReleaseRef, *, timeout_s: float) -> None:
        """Deploy and follow the rollout exactly as ``edgectl deploy`` does."""
        reply = self.client.deploy(ref, self.fleet)
        with RolloutLive(self.console) as view:
            result = following.follow(
                self.client, reply.rollout_id, timeout_s=timeout_s, on_progress=view.update
            )
        snap = result.snapshot
        self.console.print(device_table(snap))
        targets = sorted(d.device_id for d in snap.info.devices)
        if targets != sorted(self.ids):
            raise DemoFailed(f"deploy of {ref} targeted {targets}, expected {self.ids}")
        if not result.ok:
            info = snap.info
            phase = following.phase(info)
            why = "timed out" if result.timed_out else f"{phase}: {info.reason or '-'}"
            raise DemoFailed(f"rollout of {ref} {why} (see the table above)")

    def score_all(self, ref: ReleaseRef, trained: digits.TrainedModel) -> tuple[Score, ...]:
        devices = {d.device_id: d for d in self.client.list_devices(self.fleet)}
        scores = []
        n = len(self.data.y_test)
        with self.console.status(f"sending the {n} test digits to each device"):
            for device_id in self.ids:
                endpoint = self.endpoints.get(device_id) or (
                    devices[device_id].predict_endpoint if device_id in devices else ""
                )
                if not endpoint:
                    raise DemoFailed(f"{device_id} has not reported a Predict endpoint")
                with InferenceClient(endpoint, name=f"device {device_id}") as agent:
                    s = score(agent, self.data.x_test, self.data.y_test, device_id=device_id)
                if s.release and s.release != str(ref):
                    raise DemoFailed(f"{device_id} answered with {s.release}, not {ref}")
                if not s.matches(trained.accuracy):
                    raise DemoFailed(
                        f"{device_id} scored {s.accuracy:.2%} with {ref}; "
                        f"the trained model scores {trained.accuracy:.2%}"
                    )
                scores.append(s)
        t = table("DEVICE", "RELEASE", "ACCURACY", "TRAINED", "P50", "P99", title=f"Predict, {ref}")
        for s in scores:
            t.add_row(
                s.device_id, s.release or str(ref), f"{s.accuracy:.2%}",
                f"{trained.accuracy:.2%}", f"{s.p50_ms:.2f} ms", f"{s.p99_ms:.2f} ms",
            )  # fmt: skip
        self.console.print(t)
        return tuple(scores)

    def phases(self) -> dict[str, str]:
        return {d.device_id: phase_name(d.phase) for d in self.client.list_devices(self.fleet)}
