"""Store-and-forward against real processes: a broker that goes away, an agent killed with SIGKILL,
a spool that fills up, a damaged spool file, a disk that refuses writes."""

from __future__ import annotations

import json
import logging
import random
import resource
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
import pytest

from support import DEMO_MODEL, DEMO_VIDEO, REPO, Broker, wait_until, write_config


class PersistentSubscriber:
    """A subscriber with a persistent session (clean_session=False, QoS 1): the broker keeps its
    messages while it is disconnected, as a real consumer of the agent's predictions would set up."""

    def __init__(self, broker: Broker, topic: str, client_id: str):
        self.seqs: list[int] = []
        self.states: list[dict] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.2, 1)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert self._subscribed.wait(10)

    def _on_message(self, client, userdata, message) -> None:
        with self._lock:
            if message.topic.endswith("/predictions"):
                self.seqs.append(json.loads(message.payload)["seq"])
            elif message.topic.endswith("/state"):
                self.states.append(json.loads(message.payload))

    def received(self) -> list[int]:
        with self._lock:
            return list(self.seqs)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def agent_config(tmp_path, broker: Broker, device: str, source: str, extra: str = "", spool: str = "") -> str:
    return str(write_config(tmp_path / f"{device}.toml", f"""
device_id = "{device}"
state_dir = "{tmp_path}/state"
shutdown_timeout_s = 20
[mqtt]
host = "{broker.host}"
port = {broker.port}
state_interval_s = 0.5
[spool]
{spool}
[pipelines.cam]
model = "{DEMO_MODEL}"
source = {source}
top_k = 1
{extra}
"""))


def first_occurrences_in_order(seqs: list[int]) -> bool:
    """At-least-once delivery may repeat a message after a reconnect; first arrivals must be in order."""
    seen, firsts = set(), []
    for seq in seqs:
        if seq not in seen:
            seen.add(seq)
            firsts.append(seq)
    return firsts == sorted(firsts)


@pytest.mark.slow
def test_broker_away_for_20_s_loses_nothing_and_keeps_order(tmp_path, agent_process):
    broker = Broker(tmp_path, persistence=True).start()
    subscriber = PersistentSubscriber(broker, "edge/outage/cam/predictions", "outage-watch")
    source = f'{{ uri = "{DEMO_VIDEO}", loop = true }}'
    agent = agent_process("run", "--config", agent_config(tmp_path, broker, "outage", source, "max_fps = 30"))
    try:
        assert wait_until(lambda: len(subscriber.received()) >= 30, 30), agent.stderr
        broker.stop()  # SIGTERM: mosquitto saves the subscriber's session and queued messages
        time.sleep(20)
        assert agent.process.poll() is None, "the agent must keep running while the broker is away"
        broker.start()
        produced_during_outage = 20 * 30 * 0.5  # generous lower bound at 30 fps
        assert wait_until(lambda: len(set(subscriber.received())) >= 30 + produced_during_outage, 60), agent.stderr
        agent.signal(signal.SIGTERM)
        assert agent.wait(30) == 0, agent.stderr
        time.sleep(1)
        seqs = subscriber.received()
    finally:
        subscriber.stop()
        broker.stop()
    unique = sorted(set(seqs))
    assert unique == list(range(1, unique[-1] + 1)), f"missing seqs: {sorted(set(range(1, unique[-1] + 1)) - set(unique))[:20]}"
    assert first_occurrences_in_order(seqs)
    assert agent.stderr.count("lost") == 1, agent.stderr  # one line for the outage, not one per retry
    assert "not connected" not in agent.stderr, "paho's per-attempt error is not the user's business"


@pytest.mark.slow
def test_messages_spooled_before_sigkill_are_delivered_after_restart(tmp_path, agent_process):
    broker = Broker(tmp_path).start()
    subscriber = PersistentSubscriber(broker, "edge/killed/cam/predictions", "killed-watch")
    source = f'{{ uri = "{DEMO_VIDEO}", loop = true }}'
    config = agent_config(tmp_path, broker, "killed", source, "max_fps = 30")
    first = agent_process("run", "--config", config)
    try:
        assert wait_until(lambda: len(subscriber.received()) >= 10, 30), first.stderr
        subscriber.stop()
        broker.stop()
        time.sleep(3)  # predictions pile up in the spool
        first.signal(signal.SIGKILL)
        first.wait(10)
        spool = tmp_path / "state" / "spool" / "spool.db"
        with sqlite3.connect(spool) as db:
            spooled = [json.loads(row[0])["seq"] for row in db.execute("SELECT payload FROM messages ORDER BY id")]
        assert len(spooled) >= 30, "3 s at 30 fps must have left messages in the spool"
        broker.start()
        subscriber = PersistentSubscriber(broker, "edge/killed/cam/predictions", "killed-watch-2")
        second = agent_process("run", "--config", config)
        assert wait_until(lambda: set(spooled) <= set(subscriber.received()), 30), second.stderr
        assert wait_until(lambda: max(subscriber.received()) > max(spooled) + 10, 30)
        second.signal(signal.SIGTERM)
        assert second.wait(30) == 0, second.stderr
        seqs = subscriber.received()
    finally:
        subscriber.stop()
        broker.stop()
    # the restarted agent went on numbering after the last spooled prediction
    assert first_occurrences_in_order(seqs)
    after = [s for s in seqs if s > max(spooled)]
    assert after and min(after) == max(spooled) + 1


@pytest.mark.slow
def test_a_full_spool_drops_oldest_and_counts_every_drop(tmp_path, agent_process):
    broker = Broker(tmp_path)  # not started: the whole run happens during an outage
    source = f'"{DEMO_VIDEO}"'  # 200 frames, then the pipeline ends
    # predictions only: the label's change events would go through the same 20 KB and be counted as drops too
    config = agent_config(tmp_path, broker, "fullspool", source, spool="max_mb = 0.02",
                          extra="[pipelines.cam.events]\nenabled = false")
    agent = agent_process("run", "--config", config)
    assert wait_until(lambda: "every pipeline has ended" in agent.stderr, 60), agent.stderr
    broker.start()
    try:
        subscriber = PersistentSubscriber(broker, "edge/fullspool/#", "fullspool-watch")
        assert agent.wait(60) == 0, agent.stderr
        time.sleep(1)
        seqs, states = subscriber.received(), list(subscriber.states)
        subscriber.stop()
    finally:
        broker.stop()
    spool_state = states[-1]["mqtt"]["spool"]
    assert spool_state["dropped"] > 0, "20 KB cannot hold 200 predictions"
    assert len(set(seqs)) + spool_state["dropped"] == 200
    assert sorted(set(seqs))[-1] == 200, "drop_oldest keeps the newest"
    assert "spool full" in agent.stderr
    assert agent.stderr.count("spool full") == 1, "once per episode, not once per write round"


def test_a_damaged_spool_is_moved_aside_and_the_agent_keeps_working(tmp_path, agent_process):
    broker = Broker(tmp_path).start()
    spool_dir = tmp_path / "state" / "spool"
    spool_dir.mkdir(parents=True)
    (spool_dir / "spool.db").write_bytes(b"SQLite format 3\x00" + b"\x13" * 5000)  # a torn write
    subscriber = PersistentSubscriber(broker, "edge/damaged/cam/predictions", "damaged-watch")
    try:
        agent = agent_process("run", "--config", agent_config(tmp_path, broker, "damaged", f'"{DEMO_VIDEO}"', "max_frames = 20"))
        assert agent.wait(60) == 0, agent.stderr
        assert wait_until(lambda: len(subscriber.received()) == 20, 10)
    finally:
        subscriber.stop()
        broker.stop()
    assert "damaged" in agent.stderr and "moved aside" in agent.stderr
    assert list(spool_dir.glob("spool.db.corrupt-*")), "the broken file is kept for inspection"


def test_a_disk_that_refuses_writes_keeps_publishing_live_and_says_so(tmp_path):
    """RLIMIT_FSIZE makes every write past 64 KiB fail with EFBIG, as a full disk would."""
    broker = Broker(tmp_path).start()
    subscriber = PersistentSubscriber(broker, "edge/diskfull/#", "diskfull-watch")
    config = agent_config(tmp_path, broker, "diskfull", f'{{ uri = "{DEMO_VIDEO}", loop = true }}', "max_frames = 1500")

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    stderr_path = tmp_path / "diskfull.stderr"
    with open(stderr_path, "wb") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "edge_agent", "run", "--config", config],
                                   cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=limit_file_size)
        # stderr through a pipe: the log itself must not hit the file-size limit
        out, err = process.communicate(timeout=120)
        stderr.write(err)
    try:
        assert process.returncode == 0, err.decode()
        assert wait_until(lambda: len(set(subscriber.received())) == 1500, 60), err.decode()[-2000:]
        states = list(subscriber.states)
    finally:
        subscriber.stop()
        broker.stop()
    log = err.decode()
    assert log.count("publishing live without the spool") == 1, log[-3000:]
    assert any(s["mqtt"]["spool"]["error"] for s in states), "the state topic reports the spool failure"


# ------------------------------------------------------------------ the spool's counters, in process

def spool_table(path) -> tuple[int, int]:
    """(rows, bytes) as the real SQLite table holds them, read on a connection of our own."""
    with closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages").fetchone()


def make_publisher(tmp_path, broker: Broker, device: str, max_bytes: int = 100 * 1024 * 1024, policy: str = "drop_oldest"):
    from edge_agent.config import MqttConfig
    from edge_agent.mqtt.publisher import MqttPublisher
    from edge_agent.mqtt.spool_sender import SpoolSender

    publisher = MqttPublisher(MqttConfig(host=broker.host, port=broker.port), device, clean_session=False)
    path = tmp_path / f"{device}.db"
    publisher.attach_spool(SpoolSender(publisher, path, max_bytes, policy))
    publisher.start()
    return publisher, path


@pytest.mark.parametrize("policy", ["drop_oldest", "drop_new"])
def test_the_spools_counts_follow_the_table_through_writes_acks_and_drops(tmp_path, policy):
    from edge_agent.mqtt.spool import Spool

    path = tmp_path / "spool.db"
    spool = Spool(path, max_bytes=30_000, policy=policy)
    rng = random.Random(7)
    written: list = []
    cursor = total_dropped = 0
    for round_number in range(60):
        new = [(f"edge/d/cam{rng.randint(0, 2)}/predictions", b"x" * rng.randint(10, 400), 1) for _ in range(rng.randint(0, 30))]
        # acknowledge a few of the oldest rows handed out (in flight: ids <= cursor)
        inflight = [row for row in written if row.id <= cursor]
        acked = [(row.id, row.size) for row in inflight[: rng.randint(0, len(inflight))]]
        written = [row for row in written if (row.id, row.size) not in set(acked)]
        rows, dropped = spool.write(new, acked, {"seq/cam": round_number}, cursor)
        total_dropped += dropped
        with closing(sqlite3.connect(path)) as db:
            on_disk = {row_id for (row_id,) in db.execute("SELECT id FROM messages")}
        written = [row for row in written if row.id in on_disk] + rows
        assert {row.id for row in written} == on_disk
        assert (spool.count, spool.bytes) == spool_table(path), f"round {round_number}"
        assert spool.bytes <= spool.max_bytes or all(row.id <= cursor for row in written)
        cursor = max([cursor] + [row.id for row in written[: rng.randint(0, len(written))]])
    assert total_dropped > 0 and spool.dropped == total_dropped
    spool.close()
    reopened = Spool(path, max_bytes=30_000, policy=policy)
    assert (reopened.count, reopened.bytes, reopened.dropped) == (*spool_table(path), total_dropped)
    reopened.close()


def test_pending_is_every_row_in_the_spool_plus_in_flight_checked_against_the_table(tmp_path):
    broker = Broker(tmp_path, persistence=True, extra_config=("max_queued_messages 100000",)).start()
    subscriber = PersistentSubscriber(broker, "edge/pending/cam/predictions", "pending-watch")
    broker.stop()  # the subscriber's session survives; paho reconnects it when the broker is back
    publisher, path = make_publisher(tmp_path, broker, "pending")
    try:
        for seq in range(1, 12_001):
            publisher.send_prediction("cam", seq, json.dumps({"seq": seq, "pad": "x" * 40}))
        assert wait_until(lambda: spool_table(path)[0] == 12_000, 60)
        rows, size = spool_table(path)
        assert publisher.pending == rows == 12_000, "pending must count every spooled row, not what sits in RAM"
        snapshot = publisher.spool.snapshot()
        assert (snapshot["messages"], snapshot["bytes"]) == (rows, size)

        broker.start()
        assert wait_until(lambda: len(set(subscriber.received())) == 12_000, 120), len(set(subscriber.received()))
        assert wait_until(lambda: publisher.pending == 0 and spool_table(path) == (0, 0), 30), (publisher.pending, spool_table(path))
        snapshot = publisher.spool.snapshot()
        assert (snapshot["messages"], snapshot["bytes"]) == (0, 0)
    finally:
        publisher.stop(5)
        subscriber.stop()
        broker.stop()
    assert sorted(set(subscriber.received())) == list(range(1, 12_001))


def test_a_full_spool_is_logged_once_per_episode_with_the_count_when_it_ends(tmp_path, caplog):
    caplog.set_level(logging.INFO, "edge_agent")
    broker = Broker(tmp_path)  # away while the spool fills
    publisher, path = make_publisher(tmp_path, broker, "episode", max_bytes=20_000)
    try:
        seq = 0
        for _ in range(30):  # many write rounds, each over the limit
            for _ in range(20):
                seq += 1
                publisher.send_prediction("cam", seq, json.dumps({"seq": seq, "pad": "x" * 100}))
            time.sleep(0.06)
        assert wait_until(lambda: publisher.spool.count == spool_table(path)[0] and not publisher.spool._submitted, 10)
        dropped = publisher.spool.dropped
        assert dropped > 0 and spool_table(path)[0] + dropped == seq
        full = [r.getMessage() for r in caplog.records if "spool full" in r.getMessage()]
        assert len(full) == 1, full[:5]
        assert publisher.pending == spool_table(path)[0]

        broker.start()  # the spool drains: the episode ends and its count is logged
        assert wait_until(lambda: publisher.pending == 0, 30)
        assert wait_until(lambda: any("no longer full" in r.getMessage() for r in caplog.records), 10)
    finally:
        publisher.stop(5)
        broker.stop()
    ended = [r.getMessage() for r in caplog.records if "no longer full" in r.getMessage()]
    assert len(ended) == 1 and f"{dropped} messages dropped" in ended[0], ended
    assert len([r for r in caplog.records if "spool full" in r.getMessage()]) == 1


@pytest.mark.slow
def test_a_full_disk_while_the_broker_is_away_counts_every_prediction_it_cannot_keep(tmp_path):
    """The spool's disk refuses writes (RLIMIT_FSIZE, as a full tmpfs would) and the broker is away:
    the in-memory queue overflows. Every prediction that never arrives is counted as dropped."""
    broker = Broker(tmp_path, persistence=True, extra_config=("max_queued_messages 100000",)).start()
    subscriber = PersistentSubscriber(broker, "edge/fulldisk/#", "fulldisk-watch")
    broker.stop()
    frames = 15_000  # more than the 10,000 the memory queue holds
    # predictions only: the label's change events would share the memory queue and be counted as drops too
    config = agent_config(tmp_path, broker, "fulldisk", f'{{ uri = "{DEMO_VIDEO}", loop = true }}',
                          f"max_frames = {frames}\n[pipelines.cam.events]\nenabled = false")

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    process = subprocess.Popen([sys.executable, "-m", "edge_agent", "run", "--config", config],
                               cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=limit_file_size)
    log: list[str] = []  # through a pipe: the log itself must not hit the file-size limit
    reader = threading.Thread(target=lambda: log.extend(line.decode(errors="replace") for line in process.stderr),
                              name="fulldisk-log")
    reader.start()
    try:
        assert wait_until(lambda: any("every pipeline has ended" in line for line in log), 120), "".join(log)[-3000:]
        broker.start()
        assert process.wait(120) == 0, "".join(log)[-3000:]
        reader.join(10)
        assert wait_until(lambda: subscriber.states and subscriber.states[-1]["pipelines"]["cam"]["status"] == "stopped", 20)
        time.sleep(1)
        seqs, state = set(subscriber.received()), subscriber.states[-1]
    finally:
        if process.poll() is None:
            process.kill()
        subscriber.stop()
        broker.stop()
    text = "".join(log)
    mqtt_state = state["mqtt"]
    assert mqtt_state["dropped"] > 0, mqtt_state
    assert len(seqs) + mqtt_state["dropped"] + mqtt_state["spool"]["dropped"] == frames, (len(seqs), mqtt_state)
    dropping = [line for line in text.splitlines() if "held in memory" in line]
    assert len(dropping) == 2, dropping  # one when the episode starts, one with its count when it ends
    assert f"{mqtt_state['dropped']} predictions dropped" in dropping[1], dropping
