"""Where predictions go. Every sink has `name`, `send(prediction, payload_json)` (never blocks
for long) and `close(timeout_s)`: mqtt (an adapter over edge_agent.mqtt's publisher), serial
(pyserial lives in sinks.serial) and stdout."""

from __future__ import annotations

from typing import Any, Protocol, Sequence

from edge_agent.records import Prediction


class Sink(Protocol):
    name: str

    def send(self, prediction: Prediction, payload_json: str) -> None: ...
    def close(self, timeout_s: float) -> None: ...


class MessageSink(Protocol):
    """Where the interpret stage's messages go (events, counts, label): the MQTT sink."""

    def send_messages(self, pipeline: str, messages: Sequence[Any], state: dict[str, str | None] | None = None) -> None: ...


__all__ = ["MessageSink", "Sink"]
