"""A fleet of simulated agents in one process, for the rollout benchmark.

Each device has its own paho client and its own TCP connection to the broker, and follows the
real agent's MQTT protocol (``edgefleet.agent.reporting``, ``installing``): on connect a
retained Presence (last will: offline), a retained DeviceStatus (which registers the device
with the controller) and a QoS 1 subscription to its desired topic; on a desired state it
opens the signed envelope with the controller's trust store (both signatures, digest and
release checks, as the agent does), ignores a generation not newer than the one it applied,
then walks ``fetching -> verifying -> staged -> health_check -> active`` publishing a retained
status and an event at each step, sets ``generation_applied`` and ends with one telemetry
window and a fresh presence. No blob is fetched and no model is loaded: the devices are cheap
on purpose, so the benchmark measures the controller, the broker and the protocol.

No thread per client: one thread drives every client through a selector (paho's external
event loop: ``socket()``, ``loop_read()``, ``loop_write()``, ``want_write()``,
``loop_misc()``). Every paho call happens on that thread; other threads only read counters
and call ``stop``.

``SimFleets`` spreads a fleet over several such processes (10,000 devices: four of 2,500), each
with its own connections, selector and CPU, and sums their counters.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import multiprocessing
import os
import selectors
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.common import desired, topics, wire
from edgefleet.common import types as t
from edgefleet.common.errors import EdgeFleetError
from edgefleet.common.signing import TrustStore

log = logging.getLogger(__name__)

INSTALL_STEPS = (
    (t.InstallPhase.FETCHING, "fetch_started"),
    (t.InstallPhase.VERIFYING, "fetched"),
    (t.InstallPhase.STAGED, "staged"),
    (t.InstallPhase.HEALTH_CHECK, "health_check_started"),
    (t.InstallPhase.ACTIVE, "activated"),
)
CONNECT_BATCH = 50  # new connections between two turns of the loop (the broker's backlog)
MISC_EVERY_S = 1.0  # keepalive housekeeping for every client
AGENT_VERSION = "simfleet"
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Counters:
    connected: int = 0  # CONNACK accepted
    subscribed: int = 0  # SUBACK for the desired topic: ready for a rollout
    desired: int = 0  # desired states received and opened
    stale: int = 0  # ignored: generation not newer than the applied one
    rejected: int = 0  # failed to open (signature, shape, addressee)
    activated: int = 0  # reached active on a new generation
    disconnected: int = 0
    published: int = 0
    first_desired_at: float = 0.0  # time.monotonic() marks, 0 = not yet
    last_desired_at: float = 0.0
    last_activated_at: float = 0.0
    errors: list[str] = field(default_factory=list)


class SimDevice:
    """One simulated agent; every method runs on the fleet's loop thread."""

    def __init__(self, fleet: SimFleet, device_id: str) -> None:
        self.fleet = fleet
        self.device_id = device_id
        self.fd = -1
        self.mask = 0
        self.status = t.DeviceStatus(
            device_id=device_id,
            fleet=fleet.fleet,
            phase=t.InstallPhase.IDLE,
            labels={"sim": "1"},
            agent_version=AGENT_VERSION,
        )
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device_id)
        client.will_set(*self._presence(online=False), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        client.on_socket_close = self._on_socket_close
        self.client = client

    # protocol

    def _presence(self, *, online: bool) -> tuple[str, bytes]:
        p = t.Presence(
            device_id=self.device_id,
            fleet=self.fleet.fleet,
            online=online,
            active_release=self.status.active_release,
            at_ms=_now_ms(),
        )
        return topics.presence(self.fleet.fleet, self.device_id), wire.presence_to_pb(
            p
        ).SerializeToString()

    def _publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain)
        self.fleet.counters.published += 1

    def _publish_status(self) -> None:
        s = wire.status_to_pb(self.status)
        s.at_ms = _now_ms()
        self._publish(topics.status(self.device_id), s.SerializeToString(), retain=True)

    def _event(self, kind: str, message: str, phase: t.InstallPhase) -> None:
        e = t.DeviceEvent(
            device_id=self.device_id,
            kind=kind,
            message=message,
            release=self.status.target_release,
            generation=self.status.generation_applied,
            phase=phase,
            at_ms=_now_ms(),
        )
        self._publish(topics.events(self.device_id), wire.event_to_pb(e).SerializeToString())

    def _on_connect(
        self, _c: mqtt.Client, _u: object, _flags: object, reason: object, _p: object
    ) -> None:
        if getattr(reason, "is_failure", False):
            self.fleet.counters.errors.append(f"{self.device_id}: connect refused: {reason}")
            return
        self.fleet.counters.connected += 1
        self.client.subscribe(topics.desired(self.device_id), qos=1)
        self._publish(*self._presence(online=True), retain=True)
        self._publish_status()

    def _on_subscribe(self, *_args: object) -> None:
        self.fleet.counters.subscribed += 1

    def _on_disconnect(self, *_args: object) -> None:
        self.fleet.counters.disconnected += 1

    def _on_socket_close(self, _c: mqtt.Client, _u: object, _sock: object) -> None:
        self.fleet.forget(self)

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            state = desired.open_desired(
                bytes(msg.payload), self.fleet.trust, device_id=self.device_id
            )
        except EdgeFleetError as exc:
            self.fleet.counters.rejected += 1
            self.fleet.counters.errors.append(f"{self.device_id}: desired rejected: {exc}")
            self._event("desired_rejected", str(exc), t.InstallPhase.IDLE)
            return
        c = self.fleet.counters
        c.desired += 1
        c.last_desired_at = time.monotonic()
        c.first_desired_at = c.first_desired_at or c.last_desired_at
        if state.generation <= self.status.generation_applied:
            self.fleet.counters.stale += 1  # retained redelivery of what it applied already
            return
        self._install(state, 0)

    def _install(self, state: t.DesiredState, step: int) -> None:
        """One step of the install state machine; the next runs after ``step_delay_s``."""
        phase, kind = INSTALL_STEPS[step]
        release = str(state.release)
        if step == 0:
            self.status = replace(self.status, target_release=release)
            self._event(
                "install_started",
                f"generation {state.generation}: {release} (model {state.manifest.model_digest})",
                t.InstallPhase.IDLE,
            )
        if phase is t.InstallPhase.ACTIVE:
            previous = self.status.active_release
            self.status = replace(
                self.status,
                phase=phase,
                active_release=release,
                active_manifest_digest=state.manifest_digest,
                previous_release=previous,
                target_release="",
                generation_applied=state.generation,
                last_error="",
            )
            self._event(kind, f"{release} is active (previous: {previous or 'none'})", phase)
            self._publish_status()
            self._publish(*self._presence(online=True), retain=True)
            if self.fleet.telemetry:
                x = t.Telemetry(
                    device_id=self.device_id, release=release, window_s=10.0, requests=100,
                    errors=0, p50_ms=1.0, p95_ms=2.0, p99_ms=2.5, at_ms=_now_ms(),
                )  # fmt: skip
                payload = wire.telemetry_to_pb(x).SerializeToString()
                self._publish(topics.telemetry(self.device_id), payload, qos=0)
            self.fleet.counters.activated += 1
            self.fleet.counters.last_activated_at = time.monotonic()
            return
        self.status = replace(self.status, phase=phase)
        self._publish_status()
        self._event(kind, f"generation {state.generation}: -> {phase}", phase)
        if self.fleet.step_delay_s > 0:
            self.fleet.later(self.fleet.step_delay_s, self, lambda: self._install(state, step + 1))
        else:
            self._install(state, step + 1)


class SimFleet:
    """``len(device_ids)`` simulated agents of ``fleet`` on the broker at ``host:port``."""

    def __init__(
        self,
        host: str,
        port: int,
        fleet: str,
        device_ids: Sequence[str],
        trust: TrustStore,
        *,
        step_delay_s: float = 0.0,
        telemetry: bool = True,
        keepalive: int = 60,
    ) -> None:
        self.host, self.port, self.fleet, self.trust = host, port, fleet, trust
        self.step_delay_s = step_delay_s
        self.telemetry = telemetry
        self.keepalive = keepalive
        self.counters = Counters()
        self._ids = list(device_ids)
        self.devices: list[SimDevice] = []
        self._sel = selectors.DefaultSelector()
        self._timers: list[tuple[float, int, SimDevice, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="simfleet", daemon=True)
        self.loop_cpu_s = 0.0  # CPU time of the loop thread, when it has stopped

    def __len__(self) -> int:
        return len(self._ids)

    # called from other threads

    def start(self) -> SimFleet:
        self._thread.start()
        return self

    def wait(self, probe: Callable[[Counters], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if probe(self.counters):
                return True
            if not self._thread.is_alive():
                return probe(self.counters)
            time.sleep(0.05)
        return probe(self.counters)

    def wait_ready(self, timeout: float = 60.0) -> bool:
        """Every device connected and subscribed to its desired topic."""
        n = len(self._ids)
        return self.wait(lambda c: c.subscribed >= n, timeout)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    # loop thread

    def later(self, delay_s: float, dev: SimDevice, action: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (time.monotonic() + delay_s, next(self._seq), dev, action))

    def forget(self, dev: SimDevice) -> None:
        if dev.fd >= 0:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(dev.fd)
            dev.fd, dev.mask = -1, 0

    def _flush(self, dev: SimDevice) -> None:
        """Write what the client queued; watch for writability only while output waits."""
        client = dev.client
        if client.want_write():
            client.loop_write()
        if dev.fd < 0:
            return
        mask = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.want_write() else 0)
        if mask != dev.mask:
            self._sel.modify(dev.fd, mask, dev)
            dev.mask = mask

    def _connect(self, dev: SimDevice) -> None:
        try:
            dev.client.connect(self.host, self.port, keepalive=self.keepalive)
        except OSError as exc:
            self.counters.errors.append(f"{dev.device_id}: connect failed: {exc}")
            return
        sock = dev.client.socket()
        if sock is None:
            self.counters.errors.append(f"{dev.device_id}: no socket after connect")
            return
        dev.fd = sock.fileno()
        dev.mask = selectors.EVENT_READ
        self._sel.register(dev.fd, dev.mask, dev)
        self._flush(dev)

    def _run(self) -> None:
        started_cpu = time.thread_time()
        try:
            self._loop()
        except Exception as exc:  # the benchmark reports it; the thread must not die silently
            log.exception("simulated fleet loop crashed")
            self.counters.errors.append(f"loop crashed: {exc!r}")
        finally:
            self.loop_cpu_s = time.thread_time() - started_cpu
            for dev in self.devices:
                self.forget(dev)
                try:
                    dev.client.disconnect()  # a clean disconnect: no last will
                    dev.client.loop_write()
                except (OSError, ValueError):
                    pass
                try:
                    sock = dev.client.socket()
                    if sock is not None:
                        sock.close()
                except OSError:
                    pass
            self._sel.close()

    def _loop(self) -> None:
        pending = list(reversed(self._ids))
        next_misc = time.monotonic() + MISC_EVERY_S
        while not self._stop.is_set():
            for _ in range(min(CONNECT_BATCH, len(pending))):
                dev = SimDevice(self, pending.pop())
                self.devices.append(dev)
                self._connect(dev)
            now = time.monotonic()
            timeout = 0.0 if pending else 0.05
            if self._timers:
                timeout = max(0.0, min(timeout, self._timers[0][0] - now))
            if self._sel.get_map():
                events = self._sel.select(timeout)
            else:
                time.sleep(timeout)
                events = []
            for key, mask in events:
                dev = key.data
                client = dev.client
                if mask & selectors.EVENT_READ:
                    client.loop_read()
                if dev.fd >= 0 and mask & selectors.EVENT_WRITE:
                    client.loop_write()
                if dev.fd >= 0:
                    self._flush(dev)
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                _, _, dev, action = heapq.heappop(self._timers)
                if dev.fd >= 0:
                    action()
                    self._flush(dev)
            if now >= next_misc:
                next_misc = now + MISC_EVERY_S
                for dev in self.devices:
                    if dev.fd >= 0:
                        dev.client.loop_misc()
                        self._flush(dev)


# --- several processes ----------------------------------------------------------------------

REPORT_EVERY_S = 0.1  # how often a simulator process sends its counters to the parent
DEVICES_PER_PROCESS = 2500  # the default share of one simulator process


def _sum_counters(parts: Sequence[Counters]) -> Counters:
    """The counters of several fleets as one: sums, the earliest first mark, the latest last."""
    total = Counters()
    for c in parts:
        for name in ("connected", "subscribed", "desired", "stale", "rejected", "activated",
                     "disconnected", "published"):  # fmt: skip
            setattr(total, name, getattr(total, name) + getattr(c, name))
        if c.first_desired_at and (
            not total.first_desired_at or c.first_desired_at < total.first_desired_at
        ):
            total.first_desired_at = c.first_desired_at
        total.last_desired_at = max(total.last_desired_at, c.last_desired_at)
        total.last_activated_at = max(total.last_activated_at, c.last_activated_at)
        total.errors.extend(c.errors[: max(0, 20 - len(total.errors))])
    return total


def _snapshot(c: Counters) -> dict[str, object]:
    return {**{k: v for k, v in vars(c).items() if k != "errors"}, "errors": list(c.errors[:20])}


def _serve_share(
    conn: Connection,
    host: str,
    port: int,
    fleet: str,
    device_ids: list[str],
    keys_pem: list[bytes],
    step_delay_s: float,
    telemetry: bool,
) -> None:
    """One simulator process: a ``SimFleet`` of its share of the devices, its counters sent to
    the parent every ``REPORT_EVERY_S`` until the parent says stop (or goes away)."""
    from edgefleet.common.signing import load_public_keys

    trust = TrustStore(k for pem in keys_pem for k in load_public_keys(pem))
    sim = SimFleet(
        host, port, fleet, device_ids, trust, step_delay_s=step_delay_s, telemetry=telemetry
    ).start()
    try:
        while not conn.poll(REPORT_EVERY_S):
            conn.send(_snapshot(sim.counters))
    except (EOFError, OSError):
        pass
    finally:
        sim.stop()
        with contextlib.suppress(OSError, BrokenPipeError):
            conn.send(_snapshot(sim.counters))
            conn.close()


class SimFleets:
    """``SimFleet`` spread over ``processes`` simulator processes (multiprocessing, spawned),
    each holding its share of the MQTT connections on its own selector loop and CPU; the same
    interface (``start``, ``wait_ready``, ``counters``, ``stop``). The counters are each
    process's latest report (every ``REPORT_EVERY_S``), summed; their ``time.monotonic()``
    marks compare across processes (one system clock)."""

    def __init__(
        self,
        host: str,
        port: int,
        fleet: str,
        device_ids: Sequence[str],
        keys_pem: Sequence[bytes],
        *,
        processes: int = 0,
        step_delay_s: float = 0.0,
        telemetry: bool = True,
    ) -> None:
        ids = list(device_ids)
        n = processes or max(1, -(-len(ids) // DEVICES_PER_PROCESS))
        self._shares = [ids[i::n] for i in range(n)]
        self._args = (host, port, fleet)
        self._keys = list(keys_pem)
        self._step_delay_s, self._telemetry = step_delay_s, telemetry
        self._n = len(ids)
        self._procs: list[multiprocessing.process.BaseProcess] = []
        self._conns: list[Connection] = []
        self._latest: list[Counters] = []

    def __len__(self) -> int:
        return self._n

    @property
    def processes(self) -> int:
        return len(self._shares)

    def start(self) -> SimFleets:
        ctx = multiprocessing.get_context("spawn")  # not fork: the parent holds gRPC channels
        for share in self._shares:
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(
                target=_serve_share,
                args=(
                    theirs,
                    *self._args,
                    share,
                    self._keys,
                    self._step_delay_s,
                    self._telemetry,
                ),
                name="simfleet",
                daemon=True,
            )
            proc.start()
            theirs.close()
            self._procs.append(proc)
            self._conns.append(ours)
            self._latest.append(Counters())
        return self

    @property
    def counters(self) -> Counters:
        """Every process's latest counters, summed (reads what they have sent so far)."""
        for i, conn in enumerate(self._conns):
            try:
                while conn.poll():
                    got = conn.recv()
                    self._latest[i] = Counters(**got)
            except (EOFError, OSError):
                continue
        return _sum_counters(self._latest)

    def cpu_seconds(self) -> float:
        """User + system CPU of the simulator processes so far (from ``/proc``)."""
        total = 0.0
        for proc in self._procs:
            with contextlib.suppress(OSError, TypeError):
                with open(f"/proc/{proc.pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / _CLK_TCK
        return total

    def wait(self, probe: Callable[[Counters], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if probe(self.counters):
                return True
            if not all(p.is_alive() for p in self._procs):
                return probe(self.counters)
            time.sleep(0.05)
        return probe(self.counters)

    def wait_ready(self, timeout: float = 60.0) -> bool:
        """Every device of every process connected and subscribed to its desired topic."""
        return self.wait(lambda c: c.subscribed >= self._n, timeout)

    def stop(self, timeout: float = 20.0) -> None:
        for conn in self._conns:
            with contextlib.suppress(OSError, BrokenPipeError):
                conn.send("stop")
        deadline = time.monotonic() + timeout
        for proc in self._procs:
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        self.counters  # noqa: B018  (the final reports)
        for conn in self._conns:
            conn.close()
