"""The board's MQTT connection: availability, predictions (through the spool), state, requests.

Topics (all under `{prefix}/{device}`):
  status                 retained "online"; Last Will and clean shutdown retained "offline"
  {pipeline}/predictions one JSON message per processed frame (or as [publish] says)
  {pipeline}/events, {pipeline}/count/..., {pipeline}/label...
                         what the interpret stage says (edge_agent.interpret), QoS 1 through
                         the spool like predictions; counts and label retained
  state                  retained JSON, every `state_interval_s`
  models/...             model pushes and rollbacks (subscribed through `subscribe`; see
                         edge_agent.delivery.update_protocol)

The client connects in the background and reconnects with capped exponential backoff, so
an unreachable broker at start never stops capture. With `mqtt.servers` each attempt goes to
the next broker of the list (failover); the state names the one the board is on. Connection
changes are logged once.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from edge_agent.config import MqttConfig, format_server
from edge_agent.mqtt.client import MqttClient, MqttSetupError

if TYPE_CHECKING:
    from edge_agent.mqtt.spool_sender import SpoolSender

logger = logging.getLogger(__name__)

RECONNECT_MIN_DELAY_S = 1
RECONNECT_MAX_DELAY_S = 10  # a broker that is back is used again within ~10 s
MAX_QUEUED_MESSAGES = 10_000  # paho holds these in RAM while the broker is away
MAX_INFLIGHT_MESSAGES = 100
OFFLINE_RESERVE_S = 0.5  # of shutdown_timeout_s, kept for publishing "offline"
PAHO_LOGGER = "edge_agent.paho"


def read_password(config: MqttConfig) -> str | None:
    """The password from password_credential, password_file or password_env; never logged."""
    if config.password_credential:
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise MqttSetupError(
                f"mqtt.password_credential names {config.password_credential!r} but $CREDENTIALS_DIRECTORY is not set: "
                "run under systemd (LoadCredential=) or use password_file"
            )
        path = Path(directory) / config.password_credential
        try:
            return path.read_text(encoding="utf-8").rstrip("\r\n") or None  # an empty file: no password
        except OSError as err:
            raise MqttSetupError(f"mqtt.password_credential: {path} cannot be read: {err.strerror}; "
                                 "check LoadCredential= in the unit") from None
    if config.password_file:
        try:
            return Path(config.password_file).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as err:
            raise MqttSetupError(f"mqtt.password_file {config.password_file} cannot be read: {err.strerror}") from None
    if config.password_env:
        value = os.environ.get(config.password_env)
        if value is None:
            raise MqttSetupError(f"mqtt.password_env names {config.password_env}, which is not set in the environment")
        return value
    return None


class MqttPublisher:
    """One MQTT client per agent; thread-safe publish from any pipeline."""

    def __init__(self, config: MqttConfig, device_id: str, clean_session: bool = True):
        self.config = config
        self.device_id = device_id
        self.base_topic = f"{config.topic_prefix.rstrip('/')}/{device_id}"
        self.status_topic = f"{self.base_topic}/status"
        self.state_topic = f"{self.base_topic}/state"
        self.connected = threading.Event()
        self.published = 0
        self.delivered = 0
        self.refused = 0  # messages paho would not take (QoS 0 while offline, its queue full)
        self._inflight: dict[int, Callable[[], None] | None] = {}  # mid -> what to do on delivery
        self._acked_early: set[int] = set()
        self.spool: SpoolSender | None = None
        self._unsent_state: str | None = None
        self._lock = threading.Lock()
        self._all_delivered = threading.Condition(self._lock)
        self._was_connected = False
        self._stopping = False
        self._refusals: set[str] = set()  # "server: reason" logged since the last accepted connection
        self._clean_session = clean_session
        self._subscriptions: dict[str, Callable[[str, bytes], None]] = {}
        self.server = ""  # "host:port" of the broker connected to (or last connected to)
        self._connect_hooks: list[Callable[[], None]] = []
        self._client = self._make_client()

    def prediction_topic(self, pipeline: str) -> str:
        return f"{self.base_topic}/{pipeline}/predictions"

    def _make_client(self) -> MqttClient:
        config = self.config
        # a persistent session lets the broker keep our in-flight QoS 1 state across reconnects
        client = MqttClient(config.client_id or f"edge-agent-{self.device_id}", clean_session=self._clean_session,
                            log=logging.getLogger(PAHO_LOGGER), quiet_reconnects=True)
        client.set_will(self.status_topic, "offline", qos=1, retain=True)
        client.set_credentials(config.username, read_password(config))
        if config.tls is not None:
            client.set_tls(config.tls)
        client.set_limits(RECONNECT_MIN_DELAY_S, RECONNECT_MAX_DELAY_S, MAX_INFLIGHT_MESSAGES, MAX_QUEUED_MESSAGES)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.set_published_callback(self._on_publish)
        return client

    def subscribe(self, topic: str, on_message: Callable[[str, bytes], None]) -> None:
        """Receive QoS 1 messages on `topic` (wildcards allowed) as `on_message(topic, payload)`.

        The callback runs on paho's network thread, so it must only hand the message over (put it
        on a queue); the work belongs on the caller's own thread. The subscription is renewed at
        every (re)connect, so it survives a broker that restarted and forgot the session."""
        def deliver(message_topic: str, payload: bytes) -> None:
            try:
                on_message(message_topic, payload)
            except Exception:  # the edge of a callback: never let it break paho's loop
                logger.exception("MQTT handler for %s failed", topic)

        self._subscriptions[topic] = on_message
        self._client.add_handler(topic, deliver)
        if self.connected.is_set():
            self._client.subscribe([topic], qos=1)

    def on_connected(self, hook: Callable[[], None]) -> None:
        """Call `hook()` (on paho's thread; it must only publish or hand work over) after every (re)connect."""
        self._connect_hooks.append(hook)

    def send_messages(self, pipeline: str, messages, state: dict[str, str | None] | None = None) -> None:
        """The interpret stage's messages (edge_agent.interpret.Message) for `pipeline`, QoS 1, in order,
        through the spool with the state entries they leave when there is a spool (SpoolSender.submit_messages)."""
        base = f"{self.base_topic}/{pipeline}"
        if self.spool is not None:
            prefix = f"interpret/{pipeline}/"
            self.spool.submit_messages([(f"{base}/{m.subtopic}", m.payload.encode(), 1, m.retain) for m in messages],
                                       {prefix + name: value for name, value in (state or {}).items()})
            return
        for m in messages:
            self.publish(f"{base}/{m.subtopic}", m.payload, qos=1, retain=m.retain)

    def saved_state(self, pipeline: str) -> dict[str, str]:
        """The interpret stage's state entries the spool kept for `pipeline` (empty without a spool)."""
        return self.spool.states_under(f"interpret/{pipeline}/") if self.spool is not None else {}

    def attach_spool(self, spool: SpoolSender) -> None:
        """Route QoS>0 predictions through a disk spool (see mqtt.spool_sender)."""
        self.spool = spool

    def start(self) -> None:
        """Connect in the background; returns at once even when the broker is away."""
        if self.spool is not None:
            self.spool.start()
        servers = self.config.addresses
        logger.info("connecting to MQTT broker %s as %s", ", then ".join(format_server(s) for s in servers),
                    self.device_id)
        self._client.connect_in_background(servers, self.config.keepalive_s)

    def publish(
        self, topic: str, payload: str | bytes, qos: int | None = None, retain: bool = False,
        on_delivered: Callable[[], None] | None = None,
    ) -> bool:
        """Hand a message to paho; False when paho refused it. `on_delivered` runs (on paho's
        thread) when the broker acknowledges a QoS>0 message, or once a QoS 0 message is sent."""
        qos = self.config.qos if qos is None else qos
        delivery = self._client.publish(topic, payload, qos=qos, retain=retain)
        if delivery.refused or (qos == 0 and delivery.offline):  # paho drops QoS 0 while offline
            with self._lock:
                self.refused += 1
            return False
        callback = None
        with self._lock:
            self.published += 1
            # QoS 0 gets no acknowledgement (and paho drops unsent QoS 0 on disconnect); paho may
            # also report an ack before publish() returned: it is then waiting in _acked_early
            if qos == 0 or delivery.mid in self._acked_early:
                self._acked_early.discard(delivery.mid)
                callback = self._count_delivery(on_delivered)
            else:
                self._inflight[delivery.mid] = on_delivered
        if callback is not None:
            try:
                callback()
            except Exception:  # the edge of a callback: a bug in it must not break the publisher
                logger.exception("MQTT delivery callback failed")
        return True

    def _count_delivery(self, on_delivered: Callable[[], None] | None) -> Callable[[], None] | None:
        """Count one delivery (lock held); returns the callback to run once the lock is released,
        so a callback may publish or take other locks without an order between them and ours."""
        self.delivered += 1
        if not self._inflight:
            self._all_delivered.notify_all()
        return on_delivered

    @property
    def inflight(self) -> int:
        with self._lock:
            return len(self._inflight)

    def send_prediction(self, pipeline: str, seq: int, payload_json: str) -> None:
        """Publish one prediction on its pipeline's topic, through the spool when there is one."""
        topic = self.prediction_topic(pipeline)
        if self.spool is not None and self.config.qos > 0:
            self.spool.submit(topic, payload_json.encode(), self.config.qos, pipeline, seq)
        else:
            self.publish(topic, payload_json)

    def publish_state(self, state_json: str) -> None:
        # retained and replaced every interval: while the broker is away only the newest is kept,
        # and it is published as soon as the connection is back
        with self._lock:
            self._unsent_state = state_json
        if self.connected.is_set():
            self._publish_unsent_state()

    def _publish_unsent_state(self) -> None:
        with self._lock:
            state_json, self._unsent_state = self._unsent_state, None
        if state_json is not None:
            self.publish(self.state_topic, state_json, qos=1, retain=True)

    def wait_delivered(self, timeout_s: float) -> bool:
        """Wait until every message handed to paho so far is acknowledged by the broker."""
        deadline = time.monotonic() + timeout_s
        with self._all_delivered:
            while self._inflight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._all_delivered.wait(min(remaining, 0.1))
        return True

    @property
    def dropped(self) -> int:
        """Messages given up before they reached the broker or the spool (the spool counts its own)."""
        return self.refused + (self.spool.dropped_in_memory if self.spool is not None else 0)

    def settle(self, timeout_s: float) -> None:
        """Let the spool take what was submitted (bounded), so the counters are final."""
        if self.spool is not None:
            self.spool.flush(timeout_s)

    @property
    def pending(self) -> int:
        """Messages not yet acknowledged: in flight, plus those waiting in the spool."""
        with self._lock:
            inflight = len(self._inflight)
        return self.spool.undelivered if self.spool is not None else inflight

    def stop(self, timeout_s: float) -> None:
        """Deliver what is pending (bounded), publish retained "offline", disconnect."""
        deadline = time.monotonic() + timeout_s
        self._stopping = True
        if self.pending and not self.connected.is_set():
            # a batch run that finished while the broker was away: give it until the deadline
            self.connected.wait(max(0.0, deadline - time.monotonic()))
        offline_sent = False
        if self.spool is not None:
            self.spool.drain(deadline - OFFLINE_RESERVE_S)
            undelivered = self.spool.undelivered - self.spool.in_memory  # the spool logs what it held in memory
            self.spool.stop()  # its last round only writes: nothing is handed to paho after "offline"
        if self.connected.is_set():
            self.wait_delivered(max(0.0, deadline - OFFLINE_RESERVE_S - time.monotonic()))
            self.publish(self.status_topic, "offline", qos=1, retain=True)
            offline_sent = self.wait_delivered(max(0.1, deadline - time.monotonic()))
        pending = undelivered if self.spool is not None else self.inflight
        if pending:
            where = "kept in the spool for the next start" if self.spool is not None else "lost"
            logger.warning("MQTT broker %s: %d messages not delivered before shutdown_timeout_s (%s)",
                           self.server or self._client.server, pending, where)
        if offline_sent:
            self._client.disconnect()
        # else: no clean DISCONNECT, so the broker publishes the Last Will ("offline") itself
        self._client.stop()

    # callbacks from MqttClient, on paho's network thread
    def _on_connect(self, failure: str) -> None:
        if failure:
            refusal = f"{self._client.server}: {failure}"
            if refusal not in self._refusals:  # once per broker and reason until one accepts
                self._refusals.add(refusal)
                logger.error("MQTT broker %s refused the connection: %s (check mqtt.username / password); retrying",
                             self._client.server, failure)
            return
        self._refusals.clear()
        previous, self.server = self.server, self._client.server
        if previous and previous != self.server:
            logger.info("MQTT broker %s connected (failover from %s)", self.server, previous)
        else:
            logger.info("MQTT broker %s %s", self.server, "back" if self._was_connected else "connected")
        self._was_connected = True
        self.connected.set()
        if self._subscriptions:
            self._client.subscribe(list(self._subscriptions), qos=1)
        self.publish(self.status_topic, "online", qos=1, retain=True)
        self._publish_unsent_state()
        for hook in self._connect_hooks:
            try:
                hook()
            except Exception:  # the edge of a callback: never let it break paho's loop
                logger.exception("MQTT connect hook failed")

    def _on_disconnect(self, reason: str) -> None:
        if self.connected.is_set():
            self.connected.clear()
            if self._stopping:
                return
            others = " (trying the next of mqtt.servers)" if len(self.config.addresses) > 1 else ""
            logger.warning("MQTT broker %s lost (%s); reconnecting with backoff up to %d s%s",
                           self.server, reason, RECONNECT_MAX_DELAY_S, others)

    def _on_publish(self, mid: int) -> None:
        callback = None
        with self._lock:
            if mid in self._inflight:
                callback = self._count_delivery(self._inflight.pop(mid))
            else:
                self._acked_early.add(mid)
        if callback is not None:
            try:
                callback()
            except Exception:  # the edge of a callback: a bug in it must not break paho's loop
                logger.exception("MQTT delivery callback failed")
