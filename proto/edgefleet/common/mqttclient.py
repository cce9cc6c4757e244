"""The paho-mqtt 2.x adapter the controller and the agent share.

A persistent session (MQTT 3.1.1, ``clean_session=False``) so QoS 1 messages published while a
client was away are delivered when it returns; subscriptions are renewed on every connect; paho
reconnects by itself, including when the broker is down at start, after a capped exponential
delay with full jitter (``backoff.delay``) that this session sets before each attempt, so a fleet
that lost its broker does not come back in lockstep.
Handlers run on paho's network thread: they must be quick and hand real work to a queue.

The URL may list several nodes of one clustered broker, comma-separated
(``mqtt://a:1883,mqtt://b:1883``): the session connects to the first, and after each lost
connection or failed attempt tries the next one in turn, with the same delay. A
subscription the broker refuses (an ACL, or a cluster still electing its stream leaders) is
asked for again with a capped delay until it is granted.
"""

from __future__ import annotations

import contextlib
import logging
import random
import ssl
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from edgefleet.common import backoff
from edgefleet.common.errors import InvalidInputError, TransientError

log = logging.getLogger(__name__)

Handler = Callable[[str, bytes, bool], None]

RESUBSCRIBE_MIN_S = 2.0
RESUBSCRIBE_MAX_S = 60.0
RECONNECT_BASE_S = 1.0
RECONNECT_CAP_S = 30.0


def jittered_reconnect(attempt: int) -> float:
    """Seconds before connect attempt ``attempt`` (0 after a good connection was lost)."""
    return backoff.delay(attempt, base=RECONNECT_BASE_S, cap=RECONNECT_CAP_S, rand=random.random)


@dataclass(frozen=True)
class BrokerUrl:
    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> BrokerUrl:
        parts = urlsplit(url)
        # Error messages show the URL without its password: they end up in logs.
        shown = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise InvalidInputError(f"MQTT URL must start with mqtt:// or mqtts://, got {shown!r}")
        tls = parts.scheme in ("mqtts", "ssl")
        if not parts.hostname:
            raise InvalidInputError(f"MQTT URL without a host: {shown!r}")
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError as exc:
            raise InvalidInputError(f"MQTT URL with a bad port: {shown!r}") from exc
        return cls(
            host=parts.hostname,
            port=port,
            tls=tls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )

    def redacted(self) -> str:
        """For logs: never the password."""
        user = f"{self.username}:***@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}"


def parse_urls(urls: str) -> tuple[BrokerUrl, ...]:
    """A comma-separated list of broker URLs, the nodes of one broker: one scheme for all
    (one TLS setup serves every node)."""
    brokers = tuple(BrokerUrl.parse(u.strip()) for u in urls.split(",") if u.strip())
    if not brokers:
        raise InvalidInputError("no MQTT broker URL given")
    if len({b.tls for b in brokers}) > 1:
        raise InvalidInputError("MQTT broker URLs mix mqtt:// and mqtts://: use one for all")
    return brokers


def with_password_file(urls: str, password_file: Path) -> str:
    """``urls`` (one node or several) with the password read from ``password_file`` put into
    each node's URL for its user: how a broker password reaches a session without being on a
    command line or in a config file (e.g. systemd ``LoadCredential``)."""
    brokers = parse_urls(urls)
    if not all(b.username for b in brokers):
        raise InvalidInputError("an MQTT password file needs a user in the URL: mqtt://USER@HOST")
    if any(b.password for b in brokers):
        raise InvalidInputError("give the MQTT password in the URL or in a file, not both")
    try:
        password = password_file.read_text().rstrip("\r\n")
    except OSError as exc:
        raise InvalidInputError(f"cannot read the MQTT password file: {exc}") from None
    nodes = []
    for url in (u.strip() for u in urls.split(",") if u.strip()):
        parts = urlsplit(url)
        user, host = parts.username or "", parts.netloc.rpartition("@")[2]
        netloc = f"{quote(unquote(user), safe='')}:{quote(password, safe='')}@{host}"
        nodes.append(urlunsplit(parts._replace(netloc=netloc)))
    return ",".join(nodes)


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


class Publisher(Protocol):
    """The slice of ``MqttSession`` that sends: what the agent's reporter and the
    controller's senders are given."""

    @property
    def connected(self) -> bool: ...

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> object: ...


class MqttSession:
    """One long-lived broker connection with a fixed set of subscriptions."""

    def __init__(
        self,
        url: str,
        *,
        client_id: str,
        subscriptions: Iterable[tuple[str, int]] = (),
        on_message: Handler | None = None,
        will: Will | None = None,
        on_connect: Callable[[], None] | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        keepalive: int = 30,
        reconnect_delay: Callable[[int], float] = jittered_reconnect,
    ) -> None:
        self.brokers = parse_urls(url)
        self._at = 0  # the node of ``brokers`` connected or tried now
        self._subscriptions = list(subscriptions)
        self._on_message = on_message
        self._on_connect_hook = on_connect
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._keepalive = keepalive
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        self._backoff = reconnect_delay
        self._attempt = 0  # connect attempts since the last good connection
        self._client.max_queued_messages_set(10_000)
        self._resubscribe: threading.Timer | None = None
        self._resubscribe_delay = RESUBSCRIBE_MIN_S
        self._asked: dict[int, list[tuple[str, int]]] = {}  # SUBSCRIBE mid -> what it asked
        self._asked_lock = threading.Lock()  # a retry subscribes from a timer thread
        self._stopping = False
        if self.broker.username:
            self._client.username_pw_set(self.broker.username, self.broker.password)
        if cert_file and not self.broker.tls:
            raise InvalidInputError("a client certificate needs an mqtts:// broker URL")
        self._tls: ssl.SSLContext | None = None
        if self.broker.tls:
            # Our own context, so a renewed client certificate can be loaded into it later.
            self._tls = ssl.create_default_context(cafile=ca_file)
            if cert_file:
                self._tls.load_cert_chain(cert_file, key_file)
            self._client.tls_set_context(self._tls)
        if will is not None:
            self._client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        self._client.on_connect = self._handle_connect
        self._client.on_disconnect = self._handle_disconnect
        self._client.on_message = self._handle_message
        self._client.on_subscribe = self._handle_subscribe
        self._client.on_connect_fail = self._handle_connect_fail

    def reload_identity(self, cert_file: str, key_file: str) -> None:
        """Use a renewed client certificate from the next (re)connect on; the connection up
        now keeps its handshake."""
        if self._tls is None:
            raise InvalidInputError("not a TLS session")
        self._tls.load_cert_chain(cert_file, key_file)

    @property
    def broker(self) -> BrokerUrl:
        """The node connected or being tried now."""
        return self.brokers[self._at]

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        """Connect in the background; returns at once even when the broker is down."""
        self._stopping = False
        log.info("connecting to MQTT broker %s", self.broker.redacted())
        self._client.connect_async(self.broker.host, self.broker.port, keepalive=self._keepalive)
        self._client.loop_start()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def wait_subscribed(self, timeout: float) -> bool:
        """True once the broker acknowledged this connection's subscriptions."""
        return self._subscribed.wait(timeout)

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> mqtt.MQTTMessageInfo:
        """Queue a message; paho delivers QoS 1 messages once the broker is reachable."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise TransientError(f"MQTT publish to {topic} failed: {mqtt.error_string(info.rc)}")
        return info

    def stop(self, *, last: Iterable[tuple[str, bytes, bool]] = ()) -> None:
        """Publish ``last`` messages (topic, payload, retain) if connected, then disconnect."""
        self._stopping = True
        self._cancel_resubscribe()
        if self.connected:
            for topic, payload, retain in last:
                info = self._client.publish(topic, payload, qos=1, retain=retain)
                try:
                    info.wait_for_publish(timeout=2)
                except (RuntimeError, ValueError):
                    log.warning("could not publish %s before disconnecting", topic)
        self._client.disconnect()
        self._client.loop_stop()
        # paho's network thread ends without closing a socket whose connect was under way when
        # ``disconnect`` ran (it had no socket to send DISCONNECT on yet): close it here.
        sock = self._client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        # ``loop_start``'s wake-up socket pair is closed only by paho's ``Client.__del__``,
        # which a garbage-collected cycle (the callbacks hold this session) may run after the
        # sockets' own finalizers, each then an unclosed-socket ResourceWarning.
        reset = getattr(self._client, "_reset_sockets", None)
        if reset is not None:
            reset(sockpair_only=True)
        self._connected.clear()
        self._subscribed.clear()

    # paho callbacks (network thread)

    def _handle_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if reason.is_failure:
            log.warning("MQTT broker %s refused the connection: %s", self.broker.redacted(), reason)
            return
        log.info("connected to MQTT broker %s", self.broker.redacted())
        self._attempt = 0
        self._subscribed.clear()
        if self._subscriptions:
            self._subscribe(self._subscriptions)
        else:
            self._subscribed.set()
        self._connected.set()
        if self._on_connect_hook is not None:
            self._on_connect_hook()

    def _handle_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode], props: Any
    ) -> None:
        with self._asked_lock:
            asked = self._asked.pop(mid, self._subscriptions)
        refused = [sub for sub, r in zip(asked, reasons, strict=False) if r.is_failure]
        if refused:
            log.error(
                "MQTT broker %s refused subscriptions %s (check the broker ACL); asking again "
                "in %ss",
                self.broker.redacted(),
                [f for f, _ in refused],
                self._resubscribe_delay,
            )
            self._schedule_resubscribe(refused)
        else:
            self._resubscribe_delay = RESUBSCRIBE_MIN_S
        self._subscribed.set()

    def _subscribe(self, subscriptions: list[tuple[str, int]]) -> None:
        with self._asked_lock:  # recorded before its SUBACK can be handled
            rc, mid = self._client.subscribe(subscriptions)
            if rc == mqtt.MQTT_ERR_SUCCESS and mid is not None:
                self._asked[mid] = subscriptions

    def _schedule_resubscribe(self, refused: list[tuple[str, int]]) -> None:
        def again() -> None:
            if self._stopping or not self._connected.is_set():
                return  # the next connect subscribes to everything anyway
            self._subscribe(refused)

        self._cancel_resubscribe()
        timer = threading.Timer(self._resubscribe_delay, again)
        timer.daemon = True
        self._resubscribe = timer
        self._resubscribe_delay = min(self._resubscribe_delay * 2, RESUBSCRIBE_MAX_S)
        timer.start()

    def _cancel_resubscribe(self) -> None:
        if self._resubscribe is not None:
            self._resubscribe.cancel()
            self._resubscribe = None

    def _next_node(self) -> None:
        """Point paho at the next node for its next reconnect attempt. paho keeps the host in
        ``_host``/``_port``; its public setters refuse while a lost connection is being torn
        down, which is exactly when this runs (on paho's network thread, before it waits)."""
        if len(self.brokers) < 2 or self._stopping:
            return
        self._at = (self._at + 1) % len(self.brokers)
        b = self.broker
        self._client._host, self._client._port = b.host, b.port
        self._client.username_pw_set(b.username, b.password)
        log.info("next MQTT broker node to try: %s", b.redacted())

    def _back_off(self) -> None:
        """Set paho's wait before its next connect attempt. paho runs on_disconnect or
        on_connect_fail (which call this) on its network thread right before it waits, and waits
        exactly ``min_delay`` after the delay is set anew."""
        wait = self._backoff(self._attempt)
        self._attempt += 1
        # paho adds the delay to its clock and sleeps on it: fractions of a second work.
        self._client.reconnect_delay_set(min_delay=wait, max_delay=wait)  # type: ignore[arg-type]

    def _handle_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._next_node()
        self._back_off()

    def _handle_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        self._subscribed.clear()  # the next connection subscribes again
        self._cancel_resubscribe()
        if was and reason.is_failure:
            log.warning("lost MQTT broker %s (%s); reconnecting", self.broker.redacted(), reason)
        self._next_node()
        self._back_off()

    def _handle_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if self._on_message is None:
            return
        try:
            self._on_message(msg.topic, bytes(msg.payload), bool(msg.retain))
        except Exception:
            # A handler bug must not kill paho's network thread (and with it the session).
            log.exception("MQTT handler failed on %s", msg.topic)
