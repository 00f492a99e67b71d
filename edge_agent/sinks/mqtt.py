"""The MQTT sink: predictions handed to the board's MQTT publisher (edge_agent.mqtt).

Only the adapter lives here, so sinks stay one interface; the connection, spool and paho are in
edge_agent.mqtt, which this module does not import (the service wires the two together).
"""

from __future__ import annotations

from typing import Protocol

from edge_agent.records import Prediction


class PredictionPublisher(Protocol):
    def send_prediction(self, pipeline: str, seq: int, payload_json: str) -> None: ...
    def stop(self, timeout_s: float) -> None: ...


class MqttSink:
    """Sink interface over a publisher: one message per prediction on `{base}/{pipeline}/predictions`."""

    name = "mqtt"

    def __init__(self, publisher: PredictionPublisher):
        self.publisher = publisher

    def send(self, prediction: Prediction, payload_json: str) -> None:
        self.publisher.send_prediction(prediction.pipeline, prediction.seq, payload_json)

    def close(self, timeout_s: float) -> None:
        self.publisher.stop(timeout_s)
