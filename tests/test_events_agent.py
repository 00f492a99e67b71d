"""Events, counts, zones and Home Assistant discovery end to end: a real mosquitto, the agent as a
child process, a real .tflite detector whose outputs the test controls (models/make_box_finder.py:
a red square is a person, a green one a car, found where they are drawn), on videos rendered with
OpenCV in which objects appear, cross a zone and leave."""

from __future__ import annotations

import json
import signal
import threading
import time

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from support import MODELS, Broker, Collector, wait_until, write_config, write_video

BOX_FINDER = MODELS / "box_finder.tflite"
BOX_LABELS = MODELS / "box_finder.labels.txt"
W, H, FPS = 160, 120, 20
RED, GREEN = (0, 0, 230), (0, 200, 0)  # BGR

pytestmark = pytest.mark.slow  # every test here runs real agents over seconds of video (~1 min for the module)


def scene(objects_per_frame: list[list[tuple[tuple[int, int, int], int, int]]]) -> list[np.ndarray]:
    """Frames with 24x24 squares: each object is (colour, x, y) of its top-left corner."""
    frames = []
    for objects in objects_per_frame:
        frame = np.zeros((H, W, 3), np.uint8)
        for colour, x, y in objects:
            cv2.rectangle(frame, (x, y), (x + 23, y + 23), colour, -1)
        frames.append(frame)
    return frames


def crossing_video(path):
    """0.5 s empty; a person walks from the left half to the right (leaving the zone `left`), 2 s
    empty, a car stands on the right for 2.5 s, 2 s empty."""
    frames = [[]] * 10
    frames += [[(RED, 10 + 2 * i, 70)] for i in range(60)]  # bottom centre x: 22/160 .. 140/160
    frames += [[]] * 40
    frames += [[(GREEN, 120, 60)]] * 50
    frames += [[]] * 40
    return write_video(path, scene(frames), FPS)


def config_text(tmp_path, broker: Broker, device: str, source: str, extra: str = "", pipelines: str = "") -> str:
    return f"""
device_id = "{device}"
state_dir = "{tmp_path}/state-{device}"
shutdown_timeout_s = 10
[mqtt]
host = "{broker.host}"
port = {broker.port}
state_interval_s = 0.5
[homeassistant]
enabled = true
{extra}
[pipelines.door]
model = "{BOX_FINDER}"
labels = "{BOX_LABELS}"
task = "detection"
source = {source}
max_fps = {FPS}
track = ["person", "car"]
[pipelines.door.events]
max_disappeared_s = 0.5
[pipelines.door.zones.left]
polygon = [[0, 0], [0.5, 0], [0.5, 1], [0, 1]]
{pipelines}
"""


def events_of(collector: Collector, device: str) -> list[dict]:
    return collector.json(f"{device}/door/events")


def retained_snapshot(broker: Broker, pattern: str, settle_s: float = 1.5) -> dict[str, bytes]:
    """What a fresh subscriber sees: the retained messages only."""
    seen: dict[str, bytes] = {}
    collector = Collector(broker, [pattern])
    time.sleep(settle_s)
    collector.stop()
    for topic, payload, retain in collector.messages:
        if retain:
            seen[topic] = payload
    return seen


@pytest.fixture(scope="module")
def crossing_run(tmp_path_factory):
    """One agent run over the crossing video (shared: it takes ~10 s of video time)."""
    from support import AgentProcess

    tmp = tmp_path_factory.mktemp("crossing")
    broker = Broker(tmp).start()
    video = crossing_video(tmp / "crossing.avi")
    config = write_config(tmp / "agent.toml", config_text(tmp, broker, "cross", f'{{ uri = "{video}", realtime = true }}'))
    collector = Collector(broker, ["edge/cross/#", "homeassistant/#"])
    agent = AgentProcess(["run", "--config", str(config)], tmp)
    try:
        status = agent.wait(120)
        time.sleep(0.5)
        retained = retained_snapshot(broker, "#")
        yield {"status": status, "agent": agent, "collector": collector, "retained": retained}
    finally:
        agent.kill()
        collector.stop()
        broker.stop()


def test_the_exact_event_sequence_of_a_crossing(crossing_run):
    assert crossing_run["status"] == 0, crossing_run["agent"].stderr
    events = events_of(crossing_run["collector"], "cross")
    assert [(e["type"], e["label"], e["zones"], e.get("reason")) for e in events] == [
        ("new", "person", ["left"], None),
        ("update", "person", [], None),  # left the zone
        ("end", "person", [], "left"),
        ("new", "car", [], None),
        ("end", "car", [], "left"),
    ]
    person, car = events[0]["track_id"], events[3]["track_id"]
    assert person != car and [e["track_id"] for e in events] == [person] * 3 + [car] * 2
    assert [e["seq"] for e in events] == list(range(events[0]["seq"], events[0]["seq"] + 5))
    assert events[0]["id"] == 0 and events[3]["id"] == 1  # class ids stay in `id`
    assert 2.5 <= events[2]["duration_s"] <= 3.3  # the person was in view for 3 s of video
    assert events[0]["score"] == pytest.approx(0.99 * 230 / 255, abs=0.03)  # the square's brightness
    for e in events:
        assert set(e) >= {"type", "track_id", "id", "label", "score", "top_score", "box", "zones", "start_ts", "duration_s", "seq"}
    assert "end_ts" in events[2] and "end_ts" not in events[0]


def test_counts_change_only_with_events_and_end_at_zero(crossing_run):
    collector = crossing_run["collector"]
    person = [p.decode() for p in collector.payloads("cross/door/count/person")]
    zone = [p.decode() for p in collector.payloads("cross/door/left/count/person")]
    total = [p.decode() for p in collector.payloads("cross/door/count/all")]
    assert person == ["0", "1", "0"]  # corrected at start, then one person, then none
    assert zone == ["0", "1", "0"]
    assert total == ["0", "1", "0", "1", "0"]
    assert [p.decode() for p in collector.payloads("cross/door/left/count/car")] == ["0"]  # the car stood on the right
    retained = crossing_run["retained"]
    counts = {t: p.decode() for t, p in retained.items() if "/count/" in t}
    assert counts == {f"edge/cross/door/{where}count/{label}": "0" for where in ("", "left/")
                      for label in ("all", "person", "car")}


def test_predictions_carry_track_ids(crossing_run):
    predictions = crossing_run["collector"].json("cross/door/predictions")
    tracked = [d for p in predictions for d in p["detections"] if "track_id" in d]
    assert tracked and {d["label"] for d in tracked} == {"person", "car"}
    assert all(isinstance(d["track_id"], int) and d["id"] in (0, 1) for d in tracked)


def test_home_assistant_finds_the_device_retained_and_available(crossing_run):
    retained = crossing_run["retained"]
    config = json.loads(retained["homeassistant/device/edge_agent_cross/config"])
    assert {"door_person_count", "door_left_person_occupancy", "door_events", "door_fps"} <= set(config["cmps"])
    assert config["availability_topic"] == "edge/cross/status"
    assert retained["edge/cross/status"] == b"offline"  # the run ended: Home Assistant shows it unavailable


def test_events_go_out_without_predictions_when_publish_is_off(tmp_path, broker, collect):
    broker.start()
    video = crossing_video(tmp_path / "crossing.avi")
    config = write_config(tmp_path / "agent.toml", config_text(
        tmp_path, broker, "quiet", f'{{ uri = "{video}", realtime = true }}',
        pipelines="[pipelines.door.publish]\npredictions = \"off\""))
    collector = collect(broker, ["edge/quiet/#"])
    from support import AgentProcess

    agent = AgentProcess(["run", "--config", str(config)], tmp_path)
    try:
        assert agent.wait(120) == 0, agent.stderr
        time.sleep(0.5)
        assert collector.payloads("quiet/door/predictions") == []
        assert [e["type"] for e in events_of(collector, "quiet")] == ["new", "update", "end", "new", "end"]
    finally:
        agent.kill()


class PersistentSubscriber:
    """clean_session=False at QoS 1: the broker keeps what arrives while this client is away."""

    def __init__(self, broker: Broker, topic: str, client_id: str):
        self.events: list[dict] = []
        self._lock = threading.Lock()
        ready = threading.Event()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, 1)
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.2, 1)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert ready.wait(10)

    def _on_message(self, client, userdata, message) -> None:
        if message.topic.endswith("/events"):
            with self._lock:
                self.events.append(json.loads(message.payload))

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_broker_away_in_the_middle_of_an_event_new_and_end_both_arrive_in_order(tmp_path, agent_process):
    broker = Broker(tmp_path, persistence=True).start()
    # a person stays 4 s, leaves, then nothing for 6 s: the broker goes away while the person is in view
    video = write_video(tmp_path / "stay.avi", scene([[(RED, 30, 60)]] * 80 + [[]] * 120), FPS)
    config = write_config(tmp_path / "agent.toml", config_text(tmp_path, broker, "outage", f'{{ uri = "{video}", realtime = true }}'))
    subscriber = PersistentSubscriber(broker, "edge/outage/#", "outage-watch")
    agent = agent_process("run", "--config", str(config))
    try:
        assert wait_until(lambda: [e["type"] for e in subscriber.events] == ["new"], 60), agent.stderr
        broker.stop()
        assert wait_until(lambda: "lost" in agent.stderr, 20), agent.stderr
        time.sleep(5)  # the person leaves (video second 4) and its `end` is spooled meanwhile
        broker.start()
        assert wait_until(lambda: "end" in [e["type"] for e in subscriber.events], 60), agent.stderr
        assert agent.wait(60) == 0, agent.stderr
    finally:
        subscriber.stop()
        broker.stop()
    firsts = list({(e["type"], e["track_id"]): e for e in subscriber.events}.values())  # at least once: drop repeats
    assert [(e["type"], e["reason"] if e["type"] == "end" else "") for e in firsts] == [("new", ""), ("end", "left")]
    assert firsts[0]["track_id"] == firsts[1]["track_id"] and firsts[0]["seq"] < firsts[1]["seq"]


def test_a_killed_agent_ends_its_open_event_once_at_the_next_start(tmp_path, agent_process, broker, collect):
    broker.start()
    stay = write_video(tmp_path / "stay.avi", scene([[(RED, 30, 60)]] * 20), FPS)
    config = write_config(tmp_path / "agent.toml", config_text(tmp_path, broker, "crash", f'{{ uri = "{stay}", loop = true, realtime = true }}'))
    collector = collect(broker, ["edge/crash/#"])
    agent = agent_process("run", "--config", str(config))
    assert wait_until(lambda: [e["type"] for e in events_of(collector, "crash")] == ["new"], 60), agent.stderr
    assert wait_until(lambda: collector.payloads("crash/door/count/person")[-1:] == [b"1"], 20)
    time.sleep(1.0)  # the `new` has been acknowledged: the spool's state says "open"
    agent.process.send_signal(signal.SIGKILL)
    agent.wait(10)
    assert retained_snapshot(broker, "edge/crash/door/count/person")["edge/crash/door/count/person"] == b"1"  # stale
    empty = write_video(tmp_path / "empty.avi", scene([[]] * 20), FPS)
    write_config(tmp_path / "agent.toml", config_text(tmp_path, broker, "crash", f'{{ uri = "{empty}", realtime = true }}'))
    again = agent_process("run", "--config", str(config))
    assert again.wait(60) == 0, again.stderr
    time.sleep(0.5)
    events = events_of(collector, "crash")
    assert [(e["type"], e.get("reason")) for e in events] == [("new", None), ("end", "restarted")]
    assert events[1]["track_id"] == events[0]["track_id"] and events[1]["seq"] == events[0]["seq"] + 1
    assert retained_snapshot(broker, "edge/crash/door/count/person")["edge/crash/door/count/person"] == b"0"
    third = agent_process("run", "--config", str(config))  # and once more: nothing is ended twice
    assert third.wait(60) == 0, third.stderr
    time.sleep(0.5)
    assert len(events_of(collector, "crash")) == 2


def discovery_messages(collector: Collector, device: str) -> list[dict]:
    return [json.loads(p) for t, p, _ in list(collector.messages) if t == f"homeassistant/device/edge_agent_{device}/config" and p]


def test_home_assistant_birth_reannounces_and_a_reload_removes_a_pipeline(tmp_path, agent_process, broker, collect):
    broker.start()
    video = write_video(tmp_path / "loop.avi", scene([[(RED, 30, 60)]] * 10 + [[]] * 10), FPS)
    source = f'{{ uri = "{video}", loop = true, realtime = true }}'
    second = f"""[pipelines.yard]
model = "{BOX_FINDER}"
labels = "{BOX_LABELS}"
task = "detection"
source = {source}
max_fps = 5
"""
    config = write_config(tmp_path / "agent.toml", config_text(tmp_path, broker, "ha", source, pipelines=second))
    collector = collect(broker, ["homeassistant/#"])
    agent = agent_process("run", "--config", str(config))
    try:
        assert wait_until(lambda: discovery_messages(collector, "ha"), 60), agent.stderr
        first = discovery_messages(collector, "ha")[0]
        assert {"yard_person_count", "yard_dog_count", "door_person_count"} <= set(first["cmps"])
        assert "yard_left_person_count" not in first["cmps"]  # the yard has no zones
        # Home Assistant restarts: its birth message brings the device message again, after 1-5 s
        born = time.monotonic()
        collector.client.publish("homeassistant/status", "online", qos=1)
        assert wait_until(lambda: len(discovery_messages(collector, "ha")) == 2, 15)
        assert time.monotonic() - born >= 0.9
        # someone on the broker floods the birth topic: the agent answers once per burst and stays up
        for _ in range(200):
            collector.client.publish("homeassistant/status", "online", qos=0)
        collector.client.publish("homeassistant/status", b"\xff" * 100_000, qos=0)
        time.sleep(7)
        assert len(discovery_messages(collector, "ha")) == 3 and agent.process.poll() is None
        # a reload without the yard removes its entities (platform-only components), keeps the door's
        write_config(tmp_path / "agent.toml", config_text(tmp_path, broker, "ha", source))
        agent.signal(signal.SIGHUP)
        assert wait_until(lambda: len(discovery_messages(collector, "ha")) == 4, 30), agent.stderr
        after = discovery_messages(collector, "ha")[-1]["cmps"]
        removed = {cid: c for cid, c in after.items() if len(c) == 1}
        assert set(removed) == {cid for cid in first["cmps"] if cid.startswith("yard_")}
        assert removed["yard_person_occupancy"] == {"p": "binary_sensor"}
        assert after["door_person_count"] == first["cmps"]["door_person_count"]
    finally:
        agent.signal(signal.SIGTERM)
        agent.wait(30)
