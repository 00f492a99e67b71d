"""`[mqtt] servers`: the board fails over between two real mosquittos (real agent child processes),
keeps its client id, loses no prediction (no seq gap across both brokers), and says in its state
which broker it is on; a bad entry is a config error naming its index."""

from __future__ import annotations

import json
import signal
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.config import ConfigError, parse_config
from support import DEMO, DEMO_MODEL, DEMO_VIDEO, Broker, free_port, wait_until, write_config

DEVICE = "fo"


class SeqWatcher:
    """A real paho subscriber on one broker: the prediction seqs and the states it received. With
    `client_id`, a persistent session (clean_session false), so the broker queues what arrives
    while the watcher is away, across a broker restart when the broker persists."""

    def __init__(self, broker: Broker, client_id: str = ""):
        self.seqs: list[int] = []
        self.states: list[dict] = []
        self.statuses: list[bytes] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        persistent = bool(client_id)
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                  client_id=client_id or f"watch-{time.monotonic_ns()}", clean_session=not persistent)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"edge/{DEVICE}/#", qos=1)
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.2, 1)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert self._subscribed.wait(10), "watcher could not subscribe"

    def _on_message(self, client, userdata, message) -> None:
        with self._lock:
            if message.topic.endswith("/predictions"):
                self.seqs.append(json.loads(message.payload)["seq"])
            elif message.topic.endswith("/state"):
                self.states.append(json.loads(message.payload))
            elif message.topic.endswith("/status"):
                self.statuses.append(bytes(message.payload))

    def server(self) -> str:
        """What the newest state this watcher received says about the board's broker."""
        with self._lock:
            return self.states[-1]["mqtt"]["server"] if self.states else ""

    def count(self) -> int:
        with self._lock:
            return len(self.seqs)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def failover_config(tmp_path, servers: list[str], extra: str = "") -> str:
    listed = ", ".join(f'"{s}"' for s in servers)
    return str(write_config(tmp_path / "agent.toml", f"""
device_id = "{DEVICE}"
state_dir = "{tmp_path}/state"
shutdown_timeout_s = 20

[mqtt]
servers = [{listed}]
state_interval_s = 0.5

[pipelines.digits]
model = "{DEMO_MODEL}"
labels = "{DEMO}/labels.txt"
source = {{ uri = "{DEMO_VIDEO}", loop = true }}
max_fps = 20
{extra}
"""))


def kill(broker: Broker) -> None:
    """SIGKILL: the broker vanishes without a word, as a crashed or powered-off node does."""
    broker.process.kill()
    broker.process.wait(10)
    broker.process = None


def assert_no_gap(seqs: list[int]) -> None:
    unique = sorted(set(seqs))
    assert unique == list(range(1, unique[-1] + 1)), \
        f"missing seqs: {sorted(set(range(1, unique[-1] + 1)) - set(unique))[:20]}"


@pytest.fixture
def watch():
    """SeqWatcher(...) that is stopped after the test, whatever happened."""
    watchers: list[SeqWatcher] = []

    def make(broker: Broker, client_id: str = "") -> SeqWatcher:
        watchers.append(SeqWatcher(broker, client_id))
        return watchers[-1]

    yield make
    for watcher in watchers:
        watcher.stop()


@pytest.fixture
def two_brokers(tmp_path):
    (tmp_path / "b1").mkdir()
    (tmp_path / "b2").mkdir()
    first, second = Broker(tmp_path / "b1"), Broker(tmp_path / "b2", persistence=True)
    yield first, second
    first.stop()
    second.stop()


def test_the_board_moves_to_the_second_broker_and_loses_no_prediction(tmp_path, two_brokers, agent_process, watch):
    first, second = two_brokers
    first.start(), second.start()
    on_first, on_second = watch(first), watch(second)
    agent = agent_process("run", "--config", failover_config(tmp_path, [first.address, second.address]))
    try:
        assert wait_until(lambda: on_first.count() >= 20 and on_first.server() == first.address, 40), agent.stderr
        assert on_second.count() == 0, "the board publishes to one broker at a time"
        kill(first)
        killed_at = on_first.count()
        # the board moves on: predictions continue on the second broker, and its state says so
        assert wait_until(lambda: on_second.count() >= 30 and on_second.server() == second.address, 40), agent.stderr
        assert on_second.statuses and on_second.statuses[-1] == b"online"
        # the first broker back does not matter: the board stays where it is
        first.start()
        during = on_second.count()
        assert wait_until(lambda: on_second.count() >= during + 40, 40), agent.stderr
    finally:
        agent.signal(signal.SIGTERM)
        assert agent.wait(40) == 0, agent.stderr
    assert wait_until(lambda: on_second.statuses[-1:] == [b"offline"], 10)
    final = on_second.states[-1]["mqtt"]
    assert final["server"] == second.address and final["dropped"] == 0
    assert on_second.seqs[0] <= killed_at + 1, "the second broker starts where the first stopped"
    assert_no_gap(on_first.seqs + on_second.seqs)
    assert max(on_first.seqs) < max(on_second.seqs)
    # the same client id on both brokers (a persistent session, since the spool is on: c0)
    assert f"as edge-agent-{DEVICE} (p2, c0" in (first.workdir / "mosquitto.log").read_text()
    assert f"as edge-agent-{DEVICE} (p2, c0" in (second.workdir / "mosquitto.log").read_text()
    assert "failover from" in agent.stderr and "not delivered" not in agent.stderr


def test_with_every_broker_down_the_spool_keeps_everything_until_one_returns(tmp_path, two_brokers, agent_process, watch):
    first, second = two_brokers
    first.start(), second.start()
    on_first = watch(first)
    # a persistent subscriber on the persistent broker: what the board sends on its return is
    # queued for it even if the board gets there first
    on_second = watch(second, client_id="failover-watch")
    time.sleep(1.5)  # mosquitto's autosave_interval 1: the watcher's session is on disk
    agent = agent_process("run", "--config", failover_config(tmp_path, [first.address, second.address]))
    try:
        assert wait_until(lambda: on_first.count() >= 20, 40), agent.stderr
        kill(first)
        on_second.client.loop_stop()  # away (no DISCONNECT: its session stays)
        second.stop()  # SIGTERM: mosquitto saves the watcher's session
        assert wait_until(lambda: agent.stderr.count("lost") >= 1, 20), agent.stderr
        time.sleep(4)  # about 80 predictions made while no broker answers
        assert agent.process.poll() is None, "the board keeps running while every broker is down"
        second.start()
        on_second = watch(second, client_id="failover-watch")
        assert wait_until(lambda: on_second.server() == second.address and on_second.count() >= 100, 60), agent.stderr
    finally:
        agent.signal(signal.SIGTERM)
        assert agent.wait(40) == 0, agent.stderr
    assert wait_until(lambda: on_second.statuses[-1:] == [b"offline"], 10)
    final = on_second.states[-1]["mqtt"]
    assert final["dropped"] == 0 and final["spool"]["dropped"] == 0
    assert_no_gap(on_first.seqs + on_second.seqs)
    assert max(on_second.seqs) - max(on_first.seqs) >= 80  # what the spool held, and what came after


def test_a_broker_that_refuses_the_login_is_passed_over_and_named_once(tmp_path, agent_process, watch):
    import subprocess

    passwords = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "someone-else", "secret"], check=True, capture_output=True)
    (tmp_path / "b1").mkdir()
    (tmp_path / "b2").mkdir()
    refusing, open_broker = Broker(tmp_path / "b1", password_file=passwords), Broker(tmp_path / "b2")
    try:
        refusing.start(), open_broker.start()
        on_open = watch(open_broker)
        agent = agent_process("run", "--config", failover_config(tmp_path, [refusing.address, open_broker.address]))
        try:
            assert wait_until(lambda: on_open.count() >= 10 and on_open.server() == open_broker.address, 40), agent.stderr
        finally:
            agent.signal(signal.SIGTERM)
            assert agent.wait(40) == 0, agent.stderr
        assert agent.stderr.count(f"MQTT broker {refusing.address} refused the connection") == 1, agent.stderr
        assert_no_gap(on_open.seqs)
        assert min(on_open.seqs) == 1
    finally:
        refusing.stop(), open_broker.stop()


# ---------------------------------------------------------------------------- the config key

BASE = {"pipelines": {"a": {"model": "m.tflite", "source": "0"}}}


def mqtt_problems(table: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config({**BASE, "mqtt": table})
    return str(caught.value)


def test_servers_are_parsed_in_order_and_host_port_stay_for_one_broker():
    config = parse_config({**BASE, "mqtt": {"servers": ["b1.lan:1883", "10.0.0.7:8883", "[fd00::7]:1884"]}})
    assert config.mqtt.addresses == (("b1.lan", 1883), ("10.0.0.7", 8883), ("fd00::7", 1884))
    assert parse_config({**BASE, "mqtt": {"host": "one.lan", "port": 1884}}).mqtt.addresses == (("one.lan", 1884),)
    assert parse_config(BASE).mqtt.addresses == (("localhost", 1883),)


@pytest.mark.parametrize("entry", ["b2.lan", "b2.lan:", ":1883", "b2.lan:0", "b2.lan:65536", "b2.lan:x",
                                   "fd00::7:1883", "b 2:1883", 1883, ["b2", 1883], ""])
def test_a_bad_servers_entry_is_an_error_naming_its_index(entry):
    problems = mqtt_problems({"servers": ["b1.lan:1883", entry]})
    assert f'mqtt.servers[1]: expected "host:port"' in problems and "mqtt.servers[0]" not in problems
    assert repr(entry) in problems


@pytest.mark.parametrize("servers", [[], "b1.lan:1883", {"b1": 1883}])
def test_servers_must_be_a_non_empty_list(servers):
    assert "mqtt.servers: expected a non-empty list" in mqtt_problems({"servers": servers})


def test_servers_with_host_or_port_is_an_error_not_a_guess():
    problems = mqtt_problems({"servers": ["b1.lan:1883"], "host": "b0.lan", "port": 1883})
    assert "mqtt.servers: give either servers or host and port, not both" in problems
    assert "remove host and port" in problems
    assert "remove port" in mqtt_problems({"servers": ["b1.lan:1883"], "port": 1883})


def test_a_repeated_server_is_refused():
    assert "mqtt.servers[2]: 'b1.lan:1883' repeats servers[0]" in mqtt_problems(
        {"servers": ["b1.lan:1883", "b2.lan:1883", "b1.lan:1883"]})


def test_the_agent_refuses_to_start_with_a_bad_entry_and_says_which(tmp_path, agent_process):
    config = failover_config(tmp_path, [f"127.0.0.1:{free_port()}", "127.0.0.1:port"])
    agent = agent_process("run", "--config", config)
    assert agent.wait(30) != 0
    assert "mqtt.servers[1]: expected \"host:port\"" in agent.stderr and "'127.0.0.1:port'" in agent.stderr
    assert not (tmp_path / "state").exists(), "nothing is written for a config that is refused"
