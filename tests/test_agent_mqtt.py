"""The agent end to end against a real mosquitto: topics, payloads, state, availability, exit."""

from __future__ import annotations

import json
import signal

from support import DEMO, DEMO_MODEL, DEMO_TRUTH, DEMO_VIDEO, MODELS, Broker, Collector, wait_until, write_config

PREDICTION_FIELDS = {"device", "pipeline", "seq", "ts", "frame", "model", "latency_ms", "task", "classes"}


def demo_config(tmp_path, broker, device: str, extra: str = "") -> str:
    return str(write_config(tmp_path / "agent.toml", f"""
device_id = "{device}"
state_dir = "{tmp_path}/state"
shutdown_timeout_s = 10

[mqtt]
host = "{broker.host}"
port = {broker.port}
state_interval_s = 0.5

[pipelines.digits]
model = "{DEMO_MODEL}"
labels = "{DEMO}/labels.txt"
source = "{DEMO_VIDEO}"
top_k = 2
{extra}
"""))


def test_replaying_the_demo_video_publishes_every_frame_and_exits_0(tmp_path, session_broker, collect, agent_process):
    collector = collect(session_broker, ["edge/replay/#"])
    agent = agent_process("run", "--config", demo_config(tmp_path, session_broker, "replay"))
    assert agent.wait(60) == 0, agent.stderr
    assert wait_until(lambda: len(collector.payloads("/digits/predictions")) == 200, 10)
    predictions = collector.json("/digits/predictions")
    assert [p["seq"] for p in predictions] == list(range(1, 201))
    first = predictions[0]
    assert PREDICTION_FIELDS <= set(first)
    assert first["device"] == "replay" and first["pipeline"] == "digits" and first["task"] == "classification"
    assert len(first["model"]["sha256"]) == 64 and first["model"]["name"] == "digits_int8"
    assert 0 < first["latency_ms"]["inference"] <= first["latency_ms"]["total"]
    assert len(first["classes"]) == 2 and first["classes"][0]["score"] >= first["classes"][1]["score"]
    correct = sum(p["classes"][0]["label"] == DEMO_TRUTH[p["frame"] - 1] for p in predictions)
    assert correct >= 180, f"only {correct}/200 demo frames classified correctly"
    statuses = collector.payloads("/replay/status")
    assert statuses[0] == b"online" and statuses[-1] == b"offline"
    states = collector.json("/replay/state")
    final = states[-1]["pipelines"]["digits"]
    assert final["frames_processed"] == 200 and final["runtime"] in ("litert", "tflite-runtime")
    assert final["model"]["name"] == "digits_int8" and states[-1]["version"]


def test_status_and_state_are_retained_and_last_will_says_offline(tmp_path, session_broker, collect, agent_process):
    config = demo_config(tmp_path, session_broker, "willtest", 'max_fps = 5\n')
    agent = agent_process("run", "--config", config)
    watcher = collect(session_broker, ["edge/willtest/#"])
    assert wait_until(lambda: watcher.payloads("/willtest/status")[-1:] == [b"online"], 20), agent.stderr
    assert wait_until(lambda: watcher.payloads("/willtest/state"), 10)
    late = collect(session_broker, ["edge/willtest/status", "edge/willtest/state"])
    assert wait_until(lambda: len(late.messages) >= 2, 10)
    assert all(retained for _, _, retained in late.messages)
    agent.signal(signal.SIGKILL)
    agent.wait(10)
    # keepalive 30 s would be slow: mosquitto sends the will at once when the socket closes
    assert wait_until(lambda: watcher.payloads("/willtest/status")[-1:] == [b"offline"], 20)


def test_sigterm_publishes_offline_and_exits_0(tmp_path, session_broker, collect, agent_process):
    collector = collect(session_broker, ["edge/termtest/#"])
    config = demo_config(tmp_path, session_broker, "termtest", 'max_fps = 10\n')
    config_text = open(config).read().replace(f'source = "{DEMO_VIDEO}"', f'source = {{ uri = "{DEMO_VIDEO}", loop = true }}')
    open(config, "w").write(config_text)
    agent = agent_process("run", "--config", config)
    assert wait_until(lambda: len(collector.payloads("/digits/predictions")) >= 3, 20), agent.stderr
    agent.signal(signal.SIGTERM)
    assert agent.wait(10) == 0, agent.stderr
    assert wait_until(lambda: collector.payloads("/termtest/status")[-1:] == [b"offline"], 5)


def test_broker_unreachable_at_start_keeps_running_and_delivers_later(tmp_path, agent_process):
    (tmp_path / "broker").mkdir()
    broker = Broker(tmp_path / "broker", persistence=True).start()
    # the subscriber's session exists before the agent does, so the broker queues for it from the
    # agent's first message on, however soon after the broker's return the agent gets in
    Collector(broker, ["edge/latebroker/#"], client_id="late-collector", clean_session=False).stop()
    broker.stop()
    config = demo_config(tmp_path, broker, "latebroker", 'max_fps = 20\nmax_frames = 40\n')
    agent = agent_process("run", "--config", config)
    try:
        assert wait_until(lambda: "connecting to MQTT broker" in agent.stderr, 20)
        assert agent.process.poll() is None, "the agent must not exit while the broker is away"
        broker.start()
        assert agent.wait(60) == 0, agent.stderr
        collector = Collector(broker, ["edge/latebroker/#"], client_id="late-collector", clean_session=False)
        try:
            # paho keeps QoS 1 messages in memory until the broker is back: all 40 arrive in order
            assert wait_until(lambda: len(collector.payloads("/digits/predictions")) == 40, 15), \
                len(collector.payloads("/digits/predictions"))
            assert [p["seq"] for p in collector.json("/digits/predictions")] == list(range(1, 41))
        finally:
            collector.stop()
    finally:
        broker.stop()


def test_detection_pipeline_publishes_boxes(tmp_path, session_broker, collect, agent_process):
    import cv2
    import numpy as np

    image = tmp_path / "scene.png"
    rng = np.random.default_rng(0)
    cv2.imwrite(str(image), rng.integers(0, 255, (96, 128, 3), dtype=np.uint8))
    collector = collect(session_broker, ["edge/dettest/#"])
    agent = agent_process(
        "run", "--model", str(MODELS / "ssd_tiny.tflite"), "--source", str(image), "--broker", session_broker.address,
        "--device-id", "dettest", "--pipeline", "cam", "--max-frames", "3",
    )
    assert agent.wait(60) == 0, agent.stderr
    assert wait_until(lambda: len(collector.payloads("/cam/predictions")) == 3, 10)
    message = collector.json("/cam/predictions")[0]
    assert message["task"] == "detection"
    assert message["detections"], "the test model is built to detect something in any image"
    for detection in message["detections"]:
        ymin, xmin, ymax, xmax = detection["box"]
        assert 0 <= ymin <= ymax <= 1 and 0 <= xmin <= xmax <= 1
        assert detection["score"] >= 0.5 and isinstance(detection["id"], int)
