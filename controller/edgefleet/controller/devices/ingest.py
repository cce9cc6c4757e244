"""Device messages in: decode and check on paho's thread, write to the database on a worker.

``decode`` is pure: topic + payload -> a domain report, or ``MalformedMessageError``. A message
whose payload names another device than its topic is malformed too (the broker ACL lets a device
publish under its own id only, so the topic is the trustworthy half). Malformed messages are
counted and logged, never raised into paho. The worker writes in batches, one transaction each;
telemetry (QoS 0, superseded every window) is dropped when the queue is full, the rest waits.
"""

from __future__ import annotations

import logging
import queue
import threading

from sqlalchemy.exc import IntegrityError

from edgefleet.common import topics, wire
from edgefleet.common import types as t
from edgefleet.common.errors import InvalidInputError, MalformedMessageError
from edgefleet.controller.config import IngestSettings
from edgefleet.controller.devices.registry import DeviceRegistry, Incoming, Report
from edgefleet.controller.metrics import Metrics

log = logging.getLogger(__name__)

MAX_SEQ = 1 << 62  # a device's counter starts near the wall clock in µs (~2**51): room to spare

SUBSCRIPTIONS = (
    (f"{topics.ROOT}/dev/+/status", 1),
    (f"{topics.ROOT}/dev/+/events", 1),
    (f"{topics.ROOT}/dev/+/telemetry", 0),
    (f"{topics.ROOT}/fleet/+/presence/+", 1),
)


def decode(topic: str, payload: bytes) -> Report:
    where = topics.parse(topic)
    report: Report
    if where.channel == "status":
        report = wire.decode_status(payload)
    elif where.channel == "events":
        report = wire.decode_event(payload)
    elif where.channel == "telemetry":
        report = wire.decode_telemetry(payload)
    elif where.channel == "presence":
        report = wire.decode_presence(payload)
    else:
        raise MalformedMessageError(f"the controller does not read {where.channel} messages")
    if isinstance(report, t.DeviceStatus | t.DeviceEvent) and report.seq > MAX_SEQ:
        raise MalformedMessageError(f"sequence number {report.seq} out of range")
    if report.device_id != where.device_id:
        raise MalformedMessageError(
            f"payload of device {report.device_id!r} on the topic of {where.device_id!r}"
        )
    try:
        t.validate_name("device", report.device_id)
        if isinstance(report, t.DeviceStatus | t.Presence):
            t.validate_name("fleet", report.fleet)
    except InvalidInputError as exc:
        raise MalformedMessageError(str(exc)) from exc
    if isinstance(report, t.Presence) and report.fleet != where.fleet:
        raise MalformedMessageError(
            f"presence of fleet {report.fleet!r} on the topic of fleet {where.fleet!r}"
        )
    return report


def channel_of(topic: str) -> str:
    try:
        return topics.parse(topic).channel
    except MalformedMessageError:
        return "unknown"


class Ingest:
    def __init__(
        self, store: DeviceRegistry, metrics: Metrics, *, settings: IngestSettings
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._settings = settings
        self._queue: queue.Queue[Incoming | None] = queue.Queue(maxsize=settings.queue_size)
        self._thread = threading.Thread(target=self._run, name="controller-ingest", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued, then end the worker."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    def wait_idle(self, timeout: float) -> bool:
        """True once every message queued so far is written (for tests and shutdown)."""
        q = self._queue
        with q.all_tasks_done:
            return q.all_tasks_done.wait_for(lambda: q.unfinished_tasks == 0, timeout)

    def handle(self, topic: str, payload: bytes, retained: bool) -> None:
        """The MQTT message handler (paho's network thread): decode, check, enqueue."""
        channel = channel_of(topic)
        self._metrics.messages.labels(channel).inc()
        try:
            report = decode(topic, payload)
        except MalformedMessageError as exc:
            self._metrics.malformed.labels(channel).inc()
            log.warning("dropped malformed message on %s: %s", topic, exc)
            return
        item = Incoming(report, retained=retained)
        if isinstance(report, t.Telemetry):
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                self._metrics.dropped.labels(channel).inc()
            return
        self._queue.put(item)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            batch = [first]
            while len(batch) < self._settings.batch_size:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            items = [i for i in batch if i is not None]
            try:
                if items:
                    self._write(items)
            finally:
                for _ in batch:
                    self._queue.task_done()
            if None in batch:
                return

    def _write(self, items: list[Incoming]) -> None:
        try:
            try:
                self._store.apply(items)
            except IntegrityError:
                # Another controller replica (they all ingest every report) added the same new
                # device or row first: read again and apply on top of it.
                log.info("another controller wrote these devices first; applying again")
                self._store.apply(items)
        except Exception:
            log.exception("writing %d device messages failed; retrying one by one", len(items))
            for item in items:
                try:
                    self._store.apply([item])
                except Exception:
                    log.exception(
                        "dropped a %s of device %s",
                        type(item.report).__name__,
                        item.report.device_id,
                    )
