"""MQTT publishing with paho-mqtt 2.x: availability, predictions, state.

Topics (all under `{prefix}/{device}`):
  status                 retained "online"; Last Will and clean shutdown retained "offline"
  {pipeline}/predictions one JSON message per processed frame
  state                  retained JSON, every `state_interval_s`
  models/...             model pushes and rollbacks (subscribed through `subscribe`; see
                         edge_agent.delivery.update_protocol)

The client connects in the background and reconnects with capped exponential backoff, so
an unreachable broker at start never stops capture. Connection changes are logged once.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from edge_agent.config import MqttConfig
from edge_agent.records import Prediction
from edge_agent.errors import InputError

if TYPE_CHECKING:
    from edge_agent.sinks.spool_sender import SpoolSender

logger = logging.getLogger(__name__)

RECONNECT_MIN_DELAY_S = 1
RECONNECT_MAX_DELAY_S = 10  # a broker that is back is used again within ~10 s
MAX_QUEUED_MESSAGES = 10_000  # paho holds these in RAM while the broker is away
MAX_INFLIGHT_MESSAGES = 100
OFFLINE_RESERVE_S = 0.5  # of shutdown_timeout_s, kept for publishing "offline"


class MqttSetupError(InputError, ValueError):
    """The MQTT settings cannot be used (unreadable password or certificate files)."""


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
    """One paho client per agent; thread-safe publish from any pipeline."""

    name = "mqtt"

    def __init__(self, config: MqttConfig, device_id: str, clean_session: bool = True):
        self.config = config
        self.device_id = device_id
        self.base_topic = f"{config.topic_prefix.rstrip('/')}/{device_id}"
        self.status_topic = f"{self.base_topic}/status"
        self.state_topic = f"{self.base_topic}/state"
        self.connected = threading.Event()
        self.published = 0
        self.delivered = 0
        self.dropped = 0
        self._inflight: dict[int, Callable[[], None] | None] = {}  # mid -> what to do on delivery
        self._acked_early: set[int] = set()
        self.spool: SpoolSender | None = None
        self._unsent_state: str | None = None
        self._lock = threading.Lock()
        self._all_delivered = threading.Condition(self._lock)
        self._was_connected = False
        self._stopping = False
        self._last_refusal = ""
        self._clean_session = clean_session
        self._subscriptions: dict[str, Callable[[str, bytes], None]] = {}
        self._client = self._make_client()

    def prediction_topic(self, pipeline: str) -> str:
        return f"{self.base_topic}/{pipeline}/predictions"

    def _make_client(self) -> mqtt.Client:
        config = self.config
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=config.client_id or f"edge-agent-{self.device_id}",
            protocol=mqtt.MQTTv311,
            # a persistent session lets the broker keep our in-flight QoS 1 state across reconnects
            clean_session=self._clean_session,
        )
        client.enable_logger(logging.getLogger("edge_agent.paho"))
        client.will_set(self.status_topic, "offline", qos=1, retain=True)
        password = read_password(config)
        if config.username or password:
            client.username_pw_set(config.username or None, password)
        if config.tls is not None:
            try:
                client.tls_set(
                    ca_certs=config.tls.ca_file or None,
                    certfile=config.tls.cert_file or None,
                    keyfile=config.tls.key_file or None,
                    cert_reqs=ssl.CERT_REQUIRED,
                )
            except (OSError, ssl.SSLError, ValueError) as err:
                raise MqttSetupError(f"mqtt.tls: the CA or client certificate files cannot be used: {err}") from None
            client.tls_insecure_set(config.tls.insecure)
        client.reconnect_delay_set(RECONNECT_MIN_DELAY_S, RECONNECT_MAX_DELAY_S)
        client.max_inflight_messages_set(MAX_INFLIGHT_MESSAGES)
        client.max_queued_messages_set(MAX_QUEUED_MESSAGES)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        return client

    def subscribe(self, topic: str, on_message: Callable[[str, bytes], None]) -> None:
        """Receive QoS 1 messages on `topic` (wildcards allowed) as `on_message(topic, payload)`.

        The callback runs on paho's network thread, so it must only hand the message over (put it
        on a queue); the work belongs on the caller's own thread. The subscription is renewed at
        every (re)connect, so it survives a broker that restarted and forgot the session."""
        def deliver(client, userdata, message) -> None:
            try:
                on_message(message.topic, bytes(message.payload))
            except Exception:  # the edge of a callback: never let it break paho's loop
                logger.exception("MQTT handler for %s failed", topic)

        self._subscriptions[topic] = on_message
        self._client.message_callback_add(topic, deliver)
        if self.connected.is_set():
            self._client.subscribe(topic, qos=1)

    def attach_spool(self, spool: SpoolSender) -> None:
        """Route QoS>0 predictions through a disk spool (see sinks.spool_sender)."""
        self.spool = spool

    def start(self) -> None:
        """Connect in the background; returns at once even when the broker is away."""
        if self.spool is not None:
            self.spool.start()
        logger.info("connecting to MQTT broker %s:%d as %s", self.config.host, self.config.port, self.device_id)
        self._client.connect_async(self.config.host, self.config.port, keepalive=self.config.keepalive_s)
        self._client.loop_start()

    def publish(
        self, topic: str, payload: str | bytes, qos: int | None = None, retain: bool = False,
        on_delivered: Callable[[], None] | None = None,
    ) -> bool:
        """Hand a message to paho; False when paho refused it. `on_delivered` runs (on paho's
        thread) when the broker acknowledges a QoS>0 message, or once a QoS 0 message is sent."""
        qos = self.config.qos if qos is None else qos
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        offline_qos0 = qos == 0 and info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN  # paho drops these
        if offline_qos0 or info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            with self._lock:
                self.dropped += 1
            return False
        with self._lock:
            self.published += 1
            if qos == 0:  # no acknowledgement will come (and paho drops unsent QoS 0 on disconnect)
                self._acked_early.discard(info.mid)
                self._delivered(on_delivered)
                return True
            # paho may report the ack before publish() returned: it is then waiting in _acked_early
            if info.mid in self._acked_early:
                self._acked_early.discard(info.mid)
                self._delivered(on_delivered)
            else:
                self._inflight[info.mid] = on_delivered
        return True

    def _delivered(self, on_delivered: Callable[[], None] | None) -> None:
        """Count one delivery (lock held)."""
        self.delivered += 1
        if on_delivered is not None:
            on_delivered()
        if not self._inflight:
            self._all_delivered.notify_all()

    @property
    def inflight(self) -> int:
        with self._lock:
            return len(self._inflight)

    def send(self, prediction: Prediction, payload_json: str) -> None:
        """Sink interface: publish one prediction on its pipeline's topic, through the spool when there is one."""
        topic = self.prediction_topic(prediction.pipeline)
        if self.spool is not None and self.config.qos > 0:
            self.spool.submit(topic, payload_json.encode(), self.config.qos, prediction.pipeline, prediction.seq)
        else:
            self.publish(topic, payload_json)

    def close(self, timeout_s: float) -> None:
        self.stop(timeout_s)

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
            undelivered = self.spool.undelivered
            self.spool.stop()  # its last round only writes: nothing is handed to paho after "offline"
        if self.connected.is_set():
            self.wait_delivered(max(0.0, deadline - OFFLINE_RESERVE_S - time.monotonic()))
            self.publish(self.status_topic, "offline", qos=1, retain=True)
            offline_sent = self.wait_delivered(max(0.1, deadline - time.monotonic()))
        pending = undelivered if self.spool is not None else self.inflight
        if pending:
            where = "kept in the spool for the next start" if self.spool is not None else "lost"
            logger.warning("MQTT broker %s:%d: %d messages not delivered before shutdown_timeout_s (%s)",
                           self.config.host, self.config.port, pending, where)
        if offline_sent:
            self._client.disconnect()
        # else: no clean DISCONNECT, so the broker publishes the Last Will ("offline") itself
        self._client.loop_stop()

    # paho callbacks run on paho's network thread
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            text = str(reason_code)
            if text != self._last_refusal:
                self._last_refusal = text
                logger.error(
                    "MQTT broker %s:%d refused the connection: %s (check mqtt.username / password); retrying",
                    self.config.host, self.config.port, text,
                )
            return
        self._last_refusal = ""
        logger.info("MQTT broker %s:%d %s", self.config.host, self.config.port,
                    "back" if self._was_connected else "connected")
        self._was_connected = True
        self.connected.set()
        if self._subscriptions:
            client.subscribe([(topic, 1) for topic in self._subscriptions])
        self.publish(self.status_topic, "online", qos=1, retain=True)
        self._publish_unsent_state()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self.connected.is_set():
            self.connected.clear()
            if self._stopping:
                return
            logger.warning("MQTT broker %s:%d lost (%s); reconnecting with backoff up to %d s",
                           self.config.host, self.config.port, reason_code, RECONNECT_MAX_DELAY_S)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._lock:
            if mid in self._inflight:
                self._delivered(self._inflight.pop(mid))
            else:
                self._acked_early.add(mid)


class Delivery:
    """Whether a message handed to MqttListener.publish has reached the broker (QoS 1: acknowledged)."""

    def __init__(self, info: mqtt.MQTTMessageInfo):
        self._info = info

    def done(self) -> bool:
        return self._info.is_published()


class MqttListener:
    """A small client for the tools that watch and command agents (demo, bench, push, rollback).

    `on_message(topic, payload)` runs on paho's network thread. The client reconnects by itself
    (0.5 s to 5 s apart) and subscribes again each time; QoS 1 messages not yet acknowledged are
    sent again after a reconnect."""

    def __init__(self, host: str, port: int, topics: list[str], on_message, client_id: str = "",
                 max_inflight: int = 20, username: str = "", password: str | None = None):
        self._topics = topics
        self._subscribed = threading.Event()
        self._client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id)
        if username or password:
            self._client.username_pw_set(username or None, password)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *args: self._subscribed.set()
        self._client.on_message = lambda client, userdata, message: on_message(message.topic, message.payload)
        self._client.on_disconnect = self._on_disconnect
        self.disconnects = 0  # connections the broker closed (e.g. a message over its size limit)
        self._client.reconnect_delay_set(0.5, 5)
        self._client.max_inflight_messages_set(max_inflight)
        self._host, self._port = host, port

    def start(self, timeout_s: float = 5.0) -> None:
        """Connect and subscribe; raise ConnectionError if the broker does not answer in time."""
        try:
            self._client.connect(self._host, self._port, keepalive=30)
        except OSError as err:
            raise ConnectionError(f"cannot reach the MQTT broker at {self._host}:{self._port}: {err}") from err
        self._client.loop_start()
        if not self._subscribed.wait(timeout_s):
            self.stop()
            raise ConnectionError(f"the MQTT broker at {self._host}:{self._port} did not confirm the subscription")

    def publish(self, topic: str, payload: str | bytes, qos: int = 1, retain: bool = False) -> Delivery:
        """Queue a message (paho keeps QoS 1 messages across a reconnect); track it with the Delivery."""
        return Delivery(self._client.publish(topic, payload, qos=qos, retain=retain))

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if not reason_code.is_failure:
            client.subscribe([(topic, 1) for topic in self._topics])

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.disconnects += 1
