"""What the device tells the controller and its fleet over MQTT (DESIGN.md section 3).

* status (retained, QoS 1): a snapshot of the persisted state; the first one registers the
  device, so it carries fleet and labels. Published only while connected: paho would replay a
  snapshot queued offline *after* the fresh one sent on reconnect, leaving a stale retained
  status. ``on_connect`` sends the latest snapshot instead.
* events (QoS 1, not retained): written to the persisted ``outbox`` first (before the state
  change they report), drained in order once the step is reported and after every reconnect.
  Delivery is at least once; each event carries its outbox ``seq``.
* every status carries a ``seq`` that only grows (from the outbox's counter), so the controller
  can tell a stale status that paho redelivered after a reconnect from a fresh one.
* presence (retained; the last will says offline): online, Predict endpoint, active release.
* telemetry (QoS 1): through the outbox too, so what the device measured while cut off from
  the broker arrives once it is back (up to the outbox's bound; beyond it the oldest go,
  counted). Without an outbox: QoS 0, only while connected.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import replace

from edgefleet.agent.outbox import Outbox
from edgefleet.agent.state import DeviceState
from edgefleet.common import topics, wire
from edgefleet.common import types as t
from edgefleet.common.errors import TransientError
from edgefleet.common.mqttclient import Publisher

log = logging.getLogger(__name__)


REFRESH_AFTER_S = 2.0  # after a reconnect, status and presence go out once more


def _now_ms() -> int:
    return int(time.time() * 1000)


class Reporter:
    def __init__(
        self,
        *,
        device_id: str,
        fleet: str,
        labels: Mapping[str, str],
        agent_version: str,
        outbox: Outbox | None = None,
    ) -> None:
        self.device_id = device_id
        self.fleet = fleet
        self._outbox = outbox
        self._publisher: Publisher | None = None
        self._lock = threading.Lock()
        # Held from reading the snapshot to queueing it: statuses leave in seq order, and a
        # reconnect can never send an older snapshot with a newer seq than the worker's.
        self._send_lock = threading.Lock()
        self._refresh: threading.Timer | None = None
        self._status = t.DeviceStatus(
            device_id=device_id,
            fleet=fleet,
            phase=t.InstallPhase.IDLE,
            labels=dict(labels),
            agent_version=agent_version,
        )

    def attach(self, publisher: Publisher) -> None:
        self._publisher = publisher

    @property
    def status(self) -> t.DeviceStatus:
        return self._status

    def set_endpoint(self, endpoint: str) -> None:
        with self._lock:
            self._status = replace(self._status, predict_endpoint=endpoint)

    def set_runtimes(self, runtimes: tuple[str, ...]) -> None:
        """What this device can run ("onnxruntime", "container"), in every status from now."""
        with self._lock:
            self._status = replace(self._status, runtimes=runtimes)

    def set_hardware(self, hardware: t.Hardware) -> None:
        """What this device is (probed once at start), in every status from now."""
        with self._lock:
            self._status = replace(self._status, hardware=hardware)

    def set_provider(
        self, provider: str, *, fallback: str = "", variant: str = "", publish: bool
    ) -> None:
        """The execution provider the active release runs on ("": none in-process), why it
        is not the release's first preference ("": it is) and the model variant it runs ("":
        the default); ``publish``: send a status now (when connected), else with the next one."""
        with self._lock:
            old = self._status
            now = (provider, fallback, variant)
            changed = (old.active_provider, old.provider_fallback, old.active_variant) != now
            self._status = replace(
                old, active_provider=provider, provider_fallback=fallback, active_variant=variant
            )
        if publish and changed and self._connected():
            self._publish_status()

    def set_container(self, container: t.ContainerStatus | None, *, publish: bool) -> None:
        """The serving release's container as last sampled (None: none serves); ``publish``:
        send a status now (when connected), else it rides along with the next one."""
        with self._lock:
            self._status = replace(self._status, container=container)
        if publish and self._connected():
            self._publish_status()

    # status and presence

    def update(self, state: DeviceState) -> None:
        """Take a new state snapshot; publish it (and presence, if that changed) when connected."""
        with self._lock:
            old = self._status
            self._status = replace(
                old,
                phase=state.reported_phase,
                active_release=state.active.release if state.active else "",
                active_manifest_digest=state.active.manifest_digest if state.active else "",
                previous_release=state.previous.release if state.previous else "",
                target_release=state.target_release,
                generation_applied=state.generation_applied,
                last_error=state.last_error,
            )
            new = self._status
        if self._connected():
            self._publish_status()
            if new.active_release != old.active_release:
                self._publish(*self.presence_message(online=True))
        self.flush()

    def on_connect(self) -> None:
        """Runs on paho's thread after every (re)connect: presence first, then the status,
        then whatever the outbox holds; both again ``REFRESH_AFTER_S`` later.

        The second time matters: right after this callback paho re-sends the QoS 1 messages it
        queued on the connection that died, stale statuses and presence among them, and the
        broker keeps the last one it got as the retained copy a controller reads on subscribe.
        """
        self._publish(*self.presence_message(online=True))
        self._publish_status()
        self.flush()
        with self._lock:
            if self._refresh is not None:
                self._refresh.cancel()
            self._refresh = threading.Timer(REFRESH_AFTER_S, self._refresh_now)
            self._refresh.name = "agent-status-refresh"
            self._refresh.daemon = True
            self._refresh.start()

    def _refresh_now(self) -> None:
        if self._connected():
            self._publish(*self.presence_message(online=True))
            self._publish_status()

    def close(self) -> None:
        """Cancel a pending refresh (the agent is stopping)."""
        with self._lock:
            if self._refresh is not None:
                self._refresh.cancel()
                self._refresh = None

    def flush(self) -> None:
        """Let the outbox send what it holds (events are held until their step is reported)."""
        if self._outbox is not None:
            self._outbox.wake()

    def presence_message(self, *, online: bool) -> tuple[str, bytes, bool]:
        s = self._status
        presence = t.Presence(
            device_id=self.device_id,
            fleet=self.fleet,
            online=online,
            predict_endpoint=s.predict_endpoint if online else "",
            active_release=s.active_release,
            at_ms=_now_ms(),
        )
        payload = wire.presence_to_pb(presence).SerializeToString()
        return topics.presence(self.fleet, self.device_id), payload, True

    def _publish_status(self) -> None:
        """Send the newest snapshot (whichever thread asks: worker or a reconnect)."""
        with self._send_lock:
            status = self._status
            seq = self._outbox.next_status_seq() if self._outbox is not None else 0
            stamped = replace(status, at_ms=_now_ms(), seq=seq)
            self._publish(
                topics.status(self.device_id), wire.status_to_pb(stamped).SerializeToString(), True
            )

    # events and telemetry

    def event(
        self,
        kind: str,
        message: str = "",
        *,
        release: str = "",
        generation: int = 0,
        phase: t.InstallPhase | None = None,
    ) -> None:
        log.info("event %s: %s", kind, message or release)
        event = t.DeviceEvent(
            device_id=self.device_id,
            kind=kind,
            message=message,
            release=release,
            generation=generation,
            phase=phase,
            at_ms=_now_ms(),
        )
        topic = topics.events(self.device_id)
        if self._outbox is None:
            self._publish(topic, wire.event_to_pb(event).SerializeToString(), False)
            return
        self._outbox.put(
            topic, lambda seq: wire.event_to_pb(replace(event, seq=seq)).SerializeToString()
        )

    def telemetry(self, sample: t.Telemetry) -> None:
        payload = wire.telemetry_to_pb(sample).SerializeToString()
        if self._outbox is not None:
            self._outbox.put(topics.telemetry(self.device_id), lambda _seq: payload)
        elif self._connected():
            self._publish(topics.telemetry(self.device_id), payload, False, qos=0)

    def _connected(self) -> bool:
        return self._publisher is not None and self._publisher.connected

    def _publish(self, topic: str, payload: bytes, retain: bool, *, qos: int = 1) -> None:
        if self._publisher is None:
            return
        try:
            self._publisher.publish(topic, payload, qos=qos, retain=retain)
        except TransientError as exc:
            log.warning("could not publish on %s: %s", topic, exc)
