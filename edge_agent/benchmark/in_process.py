"""The two reference rates measured inside the bench process: the interpreter alone, and the
plain single-thread loop people write (read → resize → set_tensor → invoke → get_tensor →
publish, one after another, see naive_input.py).

Each is set up once and then measured in as many short windows as the bench asks for, so its
windows can alternate with the agent's (see rounds.py)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from edge_agent.config import MqttConfig, PipelineConfig, SourceSpec
from edge_agent.benchmark.naive_input import naive_input
from edge_agent.service.active_model import build_active_model
from edge_agent.mqtt.listener import MqttListener
from edge_agent.mqtt.publisher import MqttPublisher
from edge_agent.sources import make_source

WARMUP_S = 1.0  # once, after setting up: caches, XNNPACK's packed weights, the broker connection
LEAD_IN_S = 0.2  # before each window: the other measurements just had the cores and caches


@dataclass(frozen=True)
class Window:
    """What one measuring window counted."""

    count: int
    elapsed_s: float

    @property
    def rate(self) -> float:
        return self.count / self.elapsed_s if self.elapsed_s > 0 else 0.0


class InterpreterLoop:
    """invoke() on a fixed input, as TFLite's benchmark_model does."""

    def __init__(self, pipeline: PipelineConfig):
        self._active = build_active_model(pipeline)
        self._active.model.run(self._active.preprocessor.new_buffer())  # puts the fixed input in place
        _repeat(self._active.model.invoke, WARMUP_S)

    def measure(self, seconds: float) -> Window:
        _repeat(self._active.model.invoke, LEAD_IN_S)
        return _repeat(self._active.model.invoke, seconds)


class PlainLoop:
    """The plain loop on one thread, publishing at QoS 1 to a subscriber that receives every
    message, as in the agent's measurement, so both share the cores alike. Use as a context
    manager: it holds a source, a publisher and a subscriber open between windows."""

    def __init__(self, pipeline: PipelineConfig, mqtt: MqttConfig):
        self._pipeline = pipeline
        self._mqtt = mqtt
        self._active = build_active_model(pipeline)
        spec = self._active.model.input
        self._spec = spec
        preprocessor = self._active.preprocessor
        self._geometry = preprocessor.geometry_for(preprocessor.height, preprocessor.width)  # boxes as they are
        self._source = make_source(SourceSpec(uri=pipeline.source.uri, loop=True))
        self._publisher = MqttPublisher(mqtt, "bench-plain")
        self._topic = self._publisher.prediction_topic("plain")
        self._received = 0
        self._listener = MqttListener(mqtt.host, mqtt.port, [self._topic], self._count, client_id="bench-plain-watch")

    def _count(self, topic: str, payload: bytes) -> None:
        self._received += 1

    def __enter__(self) -> "PlainLoop":
        self._listener.start()
        self._publisher.start()
        try:
            self._publisher.connected.wait(5)
            self._source.open()
            _repeat(self._one_frame, WARMUP_S)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._source.close()
        finally:
            self._publisher.stop(5)
            self._listener.stop()

    def _one_frame(self) -> None:
        active = self._active
        image = self._source.read()
        decoded = active.decode(active.model.run(naive_input(image, self._spec, self._pipeline.preprocess)), self._geometry)
        payload = {"classes": [c.__dict__ for c in decoded.classes], "detections": len(decoded.detections)}
        self._publisher.publish(self._topic, json.dumps(payload))

    def measure(self, seconds: float) -> Window:
        _repeat(self._one_frame, LEAD_IN_S)
        window = _repeat(self._one_frame, seconds)
        # the window's messages are delivered before the next measurement has the cores
        self._publisher.wait_delivered(10)
        return window


def _repeat(step, seconds: float) -> Window:
    count = 0
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        step()
        count += 1
        now = time.perf_counter()
        if now >= deadline:
            return Window(count, now - started)
