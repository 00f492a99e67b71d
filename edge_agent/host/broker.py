"""Where the workstation's tools reach the boards' broker, and how they log in: address, TLS, credentials."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from edge_agent.config import TlsConfig


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    username: str = ""
    password: str | None = None
    tls: TlsConfig | None = None  # None: plain TCP

    @property
    def label(self) -> str:
        return f"{self.host}:{self.port}" + (" (TLS)" if self.tls is not None else "")


def broker_listener(broker: BrokerAddress, topics: list[str], on_message: Callable[[str, bytes], None],
                    client_id: str, max_inflight: int = 20):
    """A not yet started MqttListener for `broker`, subscribed to `topics` once started."""
    from edge_agent.mqtt.listener import MqttListener

    return MqttListener(broker.host, broker.port, topics, on_message, client_id=client_id, max_inflight=max_inflight,
                        username=broker.username, password=broker.password, tls=broker.tls)
