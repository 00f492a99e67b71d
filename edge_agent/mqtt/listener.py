"""The workstation tools' MQTT client (demo, bench, push, rollback, fleet): subscribe and command."""

from __future__ import annotations

import threading
import time
from typing import Callable

from edge_agent.config import TlsConfig
from edge_agent.mqtt.client import Delivery, MqttClient

RECONNECT_MIN_DELAY_S = 0.5
RECONNECT_MAX_DELAY_S = 5
KEEPALIVE_S = 30


class MqttListener:
    """A small client for the tools that watch and command agents (demo, bench, push, rollback).

    `on_message(topic, payload)` runs on paho's network thread. The client reconnects by itself
    (0.5 s to 5 s apart) and subscribes again each time; QoS 1 messages not yet acknowledged are
    sent again after a reconnect."""

    def __init__(self, host: str, port: int, topics: list[str], on_message: Callable[[str, bytes], None],
                 client_id: str = "", max_inflight: int = 20, username: str = "", password: str | None = None,
                 tls: TlsConfig | None = None):
        self._topics = topics
        self._subscribed = threading.Event()
        self._client = MqttClient(client_id)
        self._client.set_credentials(username, password)
        if tls is not None:
            self._client.set_tls(tls)
        self._client.on_connect = self._on_connect
        self._client.on_subscribed = self._subscribed.set
        self._client.on_disconnect = self._on_disconnect
        self._client.set_default_handler(on_message)
        self._client.set_limits(RECONNECT_MIN_DELAY_S, RECONNECT_MAX_DELAY_S, max_inflight)
        self.disconnects = 0  # connections the broker closed (e.g. a message over its size limit)
        self._refusal = ""  # why the broker refused the connection (bad credentials, not authorised)
        self._host, self._port = host, port

    def start(self, timeout_s: float = 5.0) -> None:
        """Connect and subscribe; raise ConnectionError if the broker does not answer in time."""
        self._client.connect(self._host, self._port, KEEPALIVE_S)
        deadline = time.monotonic() + timeout_s
        while not self._subscribed.wait(0.05) and not self._refusal and time.monotonic() < deadline:
            pass  # a refused login ends the wait at once: paho would only retry it
        if not self._subscribed.is_set():
            self.stop()
            if self._refusal:
                raise ConnectionError(f"the MQTT broker at {self._host}:{self._port} refused the connection: "
                                      f"{self._refusal} (check --username and --password-file)")
            raise ConnectionError(f"the MQTT broker at {self._host}:{self._port} did not confirm the subscription")

    def publish(self, topic: str, payload: str | bytes, qos: int = 1, retain: bool = False) -> Delivery:
        """Queue a message (paho keeps QoS 1 messages across a reconnect); track it with the Delivery."""
        return self._client.publish(topic, payload, qos=qos, retain=retain)

    def stop(self) -> None:
        self._client.disconnect()
        self._client.stop()

    def _on_connect(self, failure: str) -> None:
        if failure:
            self._refusal = failure
        else:
            self._client.subscribe(self._topics, qos=1)

    def _on_disconnect(self, reason: str) -> None:
        self.disconnects += 1
