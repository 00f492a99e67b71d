"""Consumers that scale out: two consumers in one shared subscription
(`$share/GROUP/edge/+/+/predictions`) split a fleet's predictions with a real mosquitto, one
over MQTT 5 and one over MQTT 3.1.1 (mosquitto supports `$share` for both), no message to both,
every message to one; the source is two real agent children."""

from __future__ import annotations

import json
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from support import DEMO, DEMO_MODEL, DEMO_VIDEO, wait_until, write_config

SHARED = "$share/workers/edge/+/+/predictions"
FRAMES = 40
DEVICES = ("share-a", "share-b")


class Consumer:
    """A real paho client subscribed with QoS 1; records (device, seq) of every prediction."""

    def __init__(self, broker, topic: str, protocol: int):
        self.received: list[tuple[str, int]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                  client_id=f"consumer-{time.monotonic_ns()}", protocol=protocol)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert self._subscribed.wait(10), f"could not subscribe to {topic}"
        assert not self.refused, f"the broker refused {topic}: {self.refused}"

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        self.refused = [str(code) for code in reason_codes if code.is_failure]
        self._subscribed.set()

    def _on_message(self, client, userdata, message) -> None:
        prediction = json.loads(message.payload)
        with self._lock:
            self.received.append((prediction["device"], prediction["seq"]))

    def count(self) -> int:
        with self._lock:
            return len(self.received)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def consumers():
    made: list[Consumer] = []

    def make(broker, topic: str, protocol: int) -> Consumer:
        made.append(Consumer(broker, topic, protocol))
        return made[-1]

    yield make
    for consumer in made:
        consumer.stop()


def board_config(tmp_path, broker, device: str) -> str:
    return str(write_config(tmp_path / f"{device}.toml", f"""
device_id = "{device}"
state_dir = "{tmp_path}/{device}-state"
shutdown_timeout_s = 10

[mqtt]
host = "{broker.host}"
port = {broker.port}

[pipelines.digits]
model = "{DEMO_MODEL}"
labels = "{DEMO}/labels.txt"
source = "{DEMO_VIDEO}"
max_frames = {FRAMES}
max_fps = 40
"""))


def test_two_consumers_in_one_share_group_split_a_fleet_without_duplicates(tmp_path, broker, consumers, agent_process):
    broker.start()
    over_v5 = consumers(broker, SHARED, mqtt.MQTTv5)
    over_v311 = consumers(broker, SHARED, mqtt.MQTTv311)
    everything = consumers(broker, "edge/+/+/predictions", mqtt.MQTTv311)  # not shared: sees every message
    boards = [agent_process("run", "--config", board_config(tmp_path, broker, device)) for device in DEVICES]
    for board in boards:
        assert board.wait(60) == 0, board.stderr
    expected = {(device, seq) for device in DEVICES for seq in range(1, FRAMES + 1)}
    assert wait_until(lambda: everything.count() == len(expected), 15)
    assert wait_until(lambda: over_v5.count() + over_v311.count() >= len(expected), 15)
    time.sleep(0.5)  # a duplicate would arrive now
    first, second = over_v5.received, over_v311.received
    assert len(first) + len(second) == len(expected), "a message went to both consumers of the group"
    assert not set(first) & set(second)
    assert set(first) | set(second) == expected == set(everything.received)
    # the broker shares the work out (mosquitto: round robin), not everything to one consumer
    assert len(first) >= len(expected) // 4 and len(second) >= len(expected) // 4, (len(first), len(second))
    # each consumer still sees one board's messages in order
    for share in (first, second):
        for device in DEVICES:
            seqs = [seq for d, seq in share if d == device]
            assert seqs == sorted(seqs)


def test_a_second_group_gets_its_own_full_copy(tmp_path, broker, consumers, agent_process):
    """Groups are independent: each group gets every message once (e.g. a database writer and an alerting service)."""
    broker.start()
    writers = [consumers(broker, SHARED, mqtt.MQTTv5) for _ in range(2)]
    alerts = [consumers(broker, "$share/alerts/edge/+/+/predictions", mqtt.MQTTv311) for _ in range(3)]
    board = agent_process("run", "--config", board_config(tmp_path, broker, DEVICES[0]))
    assert board.wait(60) == 0, board.stderr
    expected = {(DEVICES[0], seq) for seq in range(1, FRAMES + 1)}
    for group in (writers, alerts):
        assert wait_until(lambda: sum(c.count() for c in group) >= FRAMES, 15)
    time.sleep(0.5)
    for group in (writers, alerts):
        received = [message for consumer in group for message in consumer.received]
        assert len(received) == FRAMES and set(received) == expected
        assert all(consumer.count() > 0 for consumer in group), [c.count() for c in group]
