"""The one module that imports paho-mqtt: a client with plain callbacks and plain results.

Everything else in edge_agent talks MQTT through `MqttClient`; no paho object (client, message,
reason code, message info) leaves this module, so a paho upgrade touches one file.

Callbacks run on paho's network thread and receive plain values:
  on_connect(failure: str)              "" when the broker accepted the connection, else its reason
                                        (`server` says which broker answered)
  on_disconnect(reason: str)
  on_published(mid: int)                the broker acknowledged message `mid` (QoS 0: it was sent)
  on_subscribed()
  handler(topic: str, payload: bytes)   per subscribed topic filter
"""

from __future__ import annotations

import logging
import ssl
from typing import Callable, Sequence

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from edge_agent.config import TlsConfig, format_server
from edge_agent.errors import InputError

MQTT_V311 = paho.MQTTv311
# paho logs this at ERROR on every reconnect attempt while the broker is away (and once at a
# clean stop); the publisher says once that the broker is lost and once that it is back
_RECONNECT_NOISE = "Client is not connected"


class MqttSetupError(InputError, ValueError):
    """The MQTT settings cannot be used (unreadable password or certificate files)."""


class Delivery:
    """What became of one publish: handed over, queued while offline, or refused; `done()` once
    the broker has it (QoS 1: acknowledged)."""

    __slots__ = ("_info", "mid", "offline", "refused")

    def __init__(self, info: paho.MQTTMessageInfo):
        self._info = info
        self.mid: int = info.mid
        # paho queues QoS>0 messages while disconnected (and drops QoS 0 ones)
        self.offline: bool = info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN
        self.refused: bool = info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN)

    @property
    def reason(self) -> str:
        """Why paho refused the message ("" when it did not)."""
        return paho.error_string(self._info.rc) if self.refused else ""

    def done(self) -> bool:
        try:
            return self._info.is_published()
        except RuntimeError:
            # A message handed over while the connection was down keeps rc "not connected" even after
            # paho sent it on reconnect, and is_published() raises for it (the traceback `push` used to
            # die with when the broker restarted mid-push); the flag is what is_published() would report.
            return bool(self._info._published)


class _ReconnectNoise(logging.Filter):
    """Drops paho's per-attempt "Client is not connected". A filter, not a wrapper around the logger:
    it sees only records that passed the level check, so paho's per-message DEBUG calls cost nothing more."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and str(record.msg).startswith(_RECONNECT_NOISE))


_RECONNECT_FILTER = _ReconnectNoise()


class MqttClient:
    """A paho client (MQTT 3.1.1, callback API 2) configured from plain arguments."""

    def __init__(self, client_id: str = "", clean_session: bool = True, log: logging.Logger | None = None,
                 quiet_reconnects: bool = False):
        """`log` receives paho's own messages; `quiet_reconnects` drops the error paho logs at every
        reconnect attempt (for a caller that logs the loss of the broker itself, once)."""
        self._client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id,
                                   protocol=MQTT_V311, clean_session=clean_session)
        if log is not None:
            if quiet_reconnects and _RECONNECT_FILTER not in log.filters:
                log.addFilter(_RECONNECT_FILTER)
            self._client.enable_logger(log)
        self.on_connect: Callable[[str], None] | None = None
        self.on_disconnect: Callable[[str], None] | None = None
        self.on_subscribed: Callable[[], None] | None = None
        self._client.on_connect = self._connected
        self._client.on_disconnect = self._disconnected
        self._client.on_subscribe = self._subscribed
        self._client.on_pre_connect = self._before_attempt
        self._servers: list[tuple[str, int]] = []
        self._server_index = 0
        self._attempts = 0

    # --- settings (before connecting) --------------------------------------------------
    def set_will(self, topic: str, payload: str, qos: int = 1, retain: bool = True) -> None:
        self._client.will_set(topic, payload, qos=qos, retain=retain)

    def set_credentials(self, username: str | None, password: str | None) -> None:
        if username or password:
            self._client.username_pw_set(username or None, password)

    def set_tls(self, tls: TlsConfig) -> None:
        try:
            self._client.tls_set(ca_certs=tls.ca_file or None, certfile=tls.cert_file or None,
                                 keyfile=tls.key_file or None, cert_reqs=ssl.CERT_REQUIRED)
        except (OSError, ssl.SSLError, ValueError) as err:
            raise MqttSetupError(f"mqtt.tls: the CA or client certificate files cannot be used: {err}") from None
        self._client.tls_insecure_set(tls.insecure)

    def set_limits(self, reconnect_min_s: float, reconnect_max_s: float, max_inflight: int, max_queued: int = 0) -> None:
        """Capped exponential reconnect backoff; messages unacknowledged at once; messages kept while offline (0: no cap)."""
        self._client.reconnect_delay_set(reconnect_min_s, reconnect_max_s)
        self._client.max_inflight_messages_set(max_inflight)
        self._client.max_queued_messages_set(max_queued)

    def set_published_callback(self, on_published: Callable[[int], None]) -> None:
        # set directly (no adapter method in between): it runs once per message
        self._client.on_publish = lambda client, userdata, mid, reason_code, properties: on_published(mid)

    def add_handler(self, topic: str, handler: Callable[[str, bytes], None]) -> None:
        """Messages matching `topic` (wildcards allowed) go to `handler(topic, payload)`."""
        self._client.message_callback_add(topic, lambda client, userdata, message: handler(message.topic, bytes(message.payload)))

    def set_default_handler(self, handler: Callable[[str, bytes], None]) -> None:
        """Messages no `add_handler` filter matched."""
        self._client.on_message = lambda client, userdata, message: handler(message.topic, bytes(message.payload))

    # --- connection ----------------------------------------------------------------------
    def connect_in_background(self, servers: Sequence[tuple[str, int]], keepalive_s: int) -> None:
        """Connect (and reconnect) on paho's thread; returns at once even when every broker is away.

        With several `servers` (host, port), each attempt after the first goes to the next one in
        the list, round and round: a broker that is lost or cannot be reached is followed by the
        next, with paho's capped backoff between attempts (reset by a successful connection). The
        client id, credentials, TLS settings and messages queued while offline stay the same."""
        if not servers:
            raise ValueError("connect_in_background needs at least one (host, port)")
        self._servers = list(servers)
        self._server_index, self._attempts = 0, 0
        host, port = self._servers[0]
        self._client.connect_async(host, port, keepalive=keepalive_s)
        self._client.loop_start()

    @property
    def server(self) -> str:
        """ "host:port" of the broker this client is connected to, or trying now, or last tried."""
        return format_server(self._servers[self._server_index]) if self._servers else \
            format_server((self._client.host, self._client.port))

    def connect(self, host: str, port: int, keepalive_s: int) -> None:
        """Connect now (raise ConnectionError when the broker cannot be reached), then run paho's thread."""
        try:
            self._client.connect(host, port, keepalive=keepalive_s)
        except OSError as err:
            raise ConnectionError(f"cannot reach the MQTT broker at {host}:{port}: {err}") from err
        self._client.loop_start()

    def disconnect(self) -> None:
        """A clean DISCONNECT: the broker does not publish the Last Will."""
        self._client.disconnect()

    def stop(self) -> None:
        """End paho's network thread."""
        self._client.loop_stop()

    # --- messages ------------------------------------------------------------------------
    def subscribe(self, topics: list[str], qos: int = 1) -> None:
        self._client.subscribe([(topic, qos) for topic in topics])

    def publish(self, topic: str, payload: str | bytes, qos: int = 0, retain: bool = False) -> Delivery:
        return Delivery(self._client.publish(topic, payload, qos=qos, retain=retain))

    # --- paho's callbacks, translated --------------------------------------------------------
    def _before_attempt(self, client, userdata) -> None:
        # paho calls this before every connection attempt (the first and each reconnect) and reads
        # _host/_port right after it; its `host`/`port` setters refuse while its own reconnect loop
        # runs (state "connecting"), hence the attributes. Every attempt after the first moves on.
        if len(self._servers) > 1:
            if self._attempts:
                self._server_index = (self._server_index + 1) % len(self._servers)
            client._host, client._port = self._servers[self._server_index]
        self._attempts += 1

    def _connected(self, client, userdata, flags, reason_code, properties) -> None:
        if self.on_connect is not None:
            self.on_connect(str(reason_code) if reason_code.is_failure else "")

    def _disconnected(self, client, userdata, flags, reason_code, properties) -> None:
        if self.on_disconnect is not None:
            self.on_disconnect(str(reason_code))

    def _subscribed(self, client, userdata, mid, reason_codes, properties) -> None:
        if self.on_subscribed is not None:
            self.on_subscribed()
