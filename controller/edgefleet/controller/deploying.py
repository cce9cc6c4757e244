"""Deploy: a release to a fleet, as one signed, retained desired state per device.

Order matters. The new generations and the rollout are committed in one transaction (device
rows locked, so two deploys cannot hand out the same generation), and only then published: a
crash between the two burns generation numbers, which is harmless, whereas publishing first
could put a generation on the wire that a restarted controller would issue again.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select

from edgefleet.common import desired, topics
from edgefleet.common import types as t
from edgefleet.common.errors import NotFoundError, TransientError
from edgefleet.controller import planning
from edgefleet.controller.db import Database, DesiredRow, DeviceRow, RolloutRow, RolloutTargetRow
from edgefleet.controller.errors import BrokerUnavailableError
from edgefleet.controller.keys import KeyRing
from edgefleet.controller.metrics import Metrics
from edgefleet.controller.records import Release, Rollout
from edgefleet.controller.releases import Releases

log = logging.getLogger(__name__)


class Publisher(Protocol):
    """The MQTT session as a deploy uses it."""

    @property
    def connected(self) -> bool: ...

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> object: ...


def new_rollout_id() -> str:
    return "ro-" + uuid.uuid4().hex[:12]


class Deployer:
    def __init__(
        self,
        db: Database,
        releases: Releases,
        *,
        keys: KeyRing,
        publisher: Publisher,
        metrics: Metrics,
        artifact_sources: Sequence[str],
        clock: Callable[[], int],
        new_id: Callable[[], str] = new_rollout_id,
    ) -> None:
        self._db = db
        self._releases = releases
        self._keys = keys
        self._publisher = publisher
        self._metrics = metrics
        self._sources = tuple(artifact_sources)
        self._clock = clock
        self._new_id = new_id

    def deploy(self, release: str, fleet: str) -> Rollout:
        try:
            result = self._deploy(release, fleet)
        except Exception:
            self._metrics.deploys.labels("failed").inc()
            raise
        self._metrics.deploys.labels("ok").inc()
        return result

    def _deploy(self, release_text: str, fleet: str) -> Rollout:
        ref = t.ReleaseRef.parse(release_text)
        t.validate_name("fleet", fleet)
        release = self._releases.get(ref)
        if not self._has_devices(fleet):
            raise NotFoundError("fleet", fleet)
        if not self._publisher.connected:
            raise BrokerUnavailableError("MQTT broker not connected")
        _, key = self._keys.active()
        result = self._commit(release, fleet)
        failed = self._publish(release, result, key)
        if failed:
            raise TransientError(
                f"rollout {result.rollout_id}: desired state not queued for {', '.join(failed)}; "
                "deploy again"
            )
        log.info(
            "rollout %s: %s to fleet %s, %d devices",
            result.rollout_id,
            ref,
            fleet,
            len(result.targets),
            extra={"rollout": result.rollout_id, "fleet": fleet, "release": str(ref)},
        )
        return result

    def _publish(self, release: Release, result: Rollout, key: Ed25519PrivateKey) -> list[str]:
        """Seal and queue one retained desired state per target; return the devices that failed.

        paho queues QoS 1 messages while the broker is briefly away and sends them on reconnect.
        """
        failed: list[str] = []
        for target in result.targets:
            payload = desired.seal(
                device_id=target.device_id,
                fleet=result.fleet,
                generation=target.generation,
                signed_manifest=release.signed_manifest,
                rollout_id=result.rollout_id,
                issued_at_ms=result.created_at_ms,
                artifact_sources=self._sources,
                key=key,
            )
            try:
                self._publisher.publish(
                    topics.desired(target.device_id), payload, qos=1, retain=True
                )
            except TransientError as exc:
                log.error("desired state for %s not queued: %s", target.device_id, exc)
                failed.append(target.device_id)
            else:
                self._metrics.desired_published.inc()
        return failed

    def _has_devices(self, fleet: str) -> bool:
        with self._db.read() as session:
            stmt = select(DeviceRow.device_id).where(DeviceRow.fleet == fleet).limit(1)
            return session.scalar(stmt) is not None

    def _commit(self, release: Release, fleet: str) -> Rollout:
        rollout_id = self._new_id()
        now = self._clock()
        with self._db.write() as session:
            devices = session.scalars(
                select(DeviceRow).where(DeviceRow.fleet == fleet).with_for_update()
            ).all()
            if not devices:
                raise NotFoundError("fleet", fleet)
            ids = [d.device_id for d in devices]
            last = {
                r.device_id: r
                for r in session.scalars(
                    select(DesiredRow).where(DesiredRow.device_id.in_(ids)).with_for_update()
                )
            }
            members = [
                planning.Member(
                    device_id=d.device_id,
                    last_desired=last[d.device_id].generation if d.device_id in last else 0,
                    applied=d.generation_applied,
                )
                for d in devices
            ]
            targets = planning.plan_all_at_once(members)
            session.add(
                RolloutRow(
                    rollout_id=rollout_id,
                    release=str(release.ref),
                    fleet=fleet,
                    strategy=planning.Strategy.ALL_AT_ONCE.value,
                    created_at_ms=now,
                )
            )
            for target in targets:
                row = last.get(target.device_id)
                if row is None:
                    row = DesiredRow(device_id=target.device_id)
                    session.add(row)
                row.generation = target.generation
                row.release = str(release.ref)
                row.rollout_id = rollout_id
                row.issued_at_ms = now
                session.add(
                    RolloutTargetRow(
                        rollout_id=rollout_id,
                        device_id=target.device_id,
                        generation=target.generation,
                    )
                )
        return Rollout(rollout_id, release.ref, fleet, now, targets)
