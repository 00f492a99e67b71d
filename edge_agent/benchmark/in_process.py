"""The two reference rates measured inside the bench process: the interpreter alone, and the
plain single-thread loop people write (read → resize → set_tensor → invoke → get_tensor →
publish, one after another, see naive_input.py)."""

from __future__ import annotations

import json
import time

from edge_agent.config import MqttConfig, PipelineConfig, SourceSpec
from edge_agent.benchmark.naive_input import naive_input
from edge_agent.service.active_model import build_active_model
from edge_agent.mqtt.listener import MqttListener
from edge_agent.mqtt.publisher import MqttPublisher
from edge_agent.sources import make_source

WARMUP_S = 1.0


def interpreter_fps(pipeline: PipelineConfig, seconds: float) -> tuple[float, float]:
    """(invokes per second, ms per invoke) on a fixed input, after a warm-up, as benchmark_model does."""
    active = build_active_model(pipeline)
    buffer = active.preprocessor.new_buffer()
    active.model.run(buffer)  # puts the fixed input in place
    _repeat(active.model.invoke, WARMUP_S)
    count, elapsed = _repeat(active.model.invoke, seconds)
    return count / elapsed, elapsed / count * 1000.0


def plain_loop_fps(pipeline: PipelineConfig, seconds: float, mqtt: MqttConfig) -> float:
    """Frames per second of the plain loop on one thread, publishing at QoS 1."""
    active = build_active_model(pipeline)
    spec = active.model.input
    geometry = active.preprocessor.geometry_for(active.preprocessor.height, active.preprocessor.width)  # boxes as they are
    source = make_source(SourceSpec(uri=pipeline.source.uri, loop=True))
    publisher = MqttPublisher(mqtt, "bench-plain")
    topic = publisher.prediction_topic("plain")
    # a subscriber receives every message, as in the agent's measurement, so both share the cores alike
    received = [0]
    listener = MqttListener(mqtt.host, mqtt.port, [topic], lambda *_: received.__setitem__(0, received[0] + 1),
                            client_id="bench-plain-watch")
    listener.start()
    publisher.start()
    publisher.connected.wait(5)
    source.open()

    def one_frame() -> None:
        image = source.read()
        decoded = active.decode(active.model.run(naive_input(image, spec, pipeline.preprocess)), geometry)
        payload = {"classes": [c.__dict__ for c in decoded.classes], "detections": len(decoded.detections)}
        publisher.publish(topic, json.dumps(payload))

    try:
        _repeat(one_frame, WARMUP_S)
        count, elapsed = _repeat(one_frame, seconds)
        publisher.wait_delivered(10)
    finally:
        source.close()
        publisher.stop(5)
        listener.stop()
    return count / elapsed


def _repeat(step, seconds: float) -> tuple[int, float]:
    count = 0
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        step()
        count += 1
        now = time.perf_counter()
        if now >= deadline:
            return count, now - started
