"""Fleet discovery (issue 16, item 1): a signed request on `edge/fleet/discover` that every board answers
on its own topic, so `fleet list`, `push --group` and `models list --group` find boards on a broker that
does not deliver retained messages to wildcard subscriptions.

How RabbitMQ is simulated, honestly: the boards publish their state once at start (state_interval_s =
3600, so no live state falls into a discovery window), and once they are up the test clears every
retained state and status topic (an empty retained message deletes it on any broker). A pusher then
hears exactly what a pusher on RabbitMQ hears through `edge/+/state`: nothing. `--discover-s 0` (the
retained-only lookup of before) fails there with "no device announces group", which shows the setup
really hides them; discovery finds them.

The boards are real agent children against one real mosquitto: disc-a1 and disc-a2 (group g1) and
disc-b1 (group g2) trust the key `dev`; two boards both configured as disc-dup (group gdup) trust it
too; disc-open (group gopen) has no trusted keys and takes unsigned requests (allow_unsigned_models),
answering at most 3 discoveries a minute. Attacks, each from a plain client on the same broker:
unsigned, replayed, foreign-signed and wrongly bound discover requests (ignored by signed boards), a
flood (bounded answers; a signed board's owner still gets its answer), forged and malformed answers
(counted, logged once, an intruder outside the group not pushed)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from crafted_models import make_bundle, make_keys
from edge_agent.delivery.fleet_protocol import (
    MAX_ANSWER_BYTES,
    BoardAnswer,
    PipelineInfo,
    encode_answer,
    parse_answer,
)
from edge_agent.delivery.keys import load_public_key
from edge_agent.delivery.request_limits import ProtocolError
from edge_agent.delivery.signed_request import sign_request
from edge_agent.service.request_gate import CLOSED, OPEN, SIGNED, Refusal, RequestGate
from push_support import agent_config, events, predictions
from support import DEMO_FLOAT_MODEL, DEMO_MODEL, REPO, AgentProcess, Collector, wait_until

INT8_SHA = hashlib.sha256(DEMO_MODEL.read_bytes()).hexdigest()
FLOAT_SHA = hashlib.sha256(DEMO_FLOAT_MODEL.read_bytes()).hexdigest()
SIGNED_BOARDS = {"disc-a1": "g1", "disc-a2": "g1", "disc-b1": "g2"}
OPEN_BOARD = "disc-open"
OPEN_RATE = 3  # discoveries the open board answers per minute
DISCOVER_S = "2.5"  # the tests' --discover-s: answers come in milliseconds; the default 6 s is used once
DISCOVER_TOPIC = "edge/fleet/discover"


# ------------------------------------------------------------------ without a broker

@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fleet-keys")
    private = make_keys(folder, "dev", "other")
    return {**private, "folder": folder, "trusted": [load_public_key(folder / "dev.pub")]}


def discover_payload(key, request_id: str, group: str = "", device: str = "*") -> bytes:
    params = {"request_id": request_id, "group": group}
    return json.dumps(sign_request(key, "discover", device, request_id, params) if key else params).encode()


def test_the_gate_admits_a_discover_only_signed_for_every_device_fresh_and_by_a_trusted_key(keys):
    gate = RequestGate("edge/board/models", "board", SIGNED, keys["trusted"], 300.0, 12)
    good = discover_payload(keys["dev"], "d-1", "g1")
    request = gate.admit_discover(good)
    assert (request.kind, request.request_id, request.data, request.signed_by) == \
        ("discover", "d-1", {"request_id": "d-1", "group": "g1"}, keys["dev"].key_id)
    refusals = {
        "replayed": good,
        "unsigned": discover_payload(None, "d-2"),
        "signed by an untrusted key": discover_payload(keys["other"], "d-3"),
        "signed for one board, not the fleet": discover_payload(keys["dev"], "d-4", device="board"),
        "a begin's signature on a discover": json.dumps(
            sign_request(keys["dev"], "begin", "*", "d-5", {"request_id": "d-5", "group": ""})).encode(),
        "not JSON": b"\xff\xfe",
        "a bad request id": discover_payload(None, "no spaces allowed"),
        "too large": json.dumps({"request_id": "d-6", "group": "", "pad": "x" * 5000}).encode(),
    }
    for what, payload in refusals.items():
        with pytest.raises(Refusal) as refused:
            gate.admit_discover(payload)
        assert refused.value.silent, f"{what}: a broadcast's refusal is never answered (no flood for the sender)"
    old = json.dumps(sign_request(keys["dev"], "discover", "*", "d-7", {"request_id": "d-7", "group": ""},
                                  issued_at_ms=int(time.time() * 1000) - 3_600_000)).encode()
    with pytest.raises(Refusal, match="behind this board's clock"):
        gate.admit_discover(old)
    assert RequestGate("b", "board", OPEN, [], 300.0, 12).admit_discover(discover_payload(None, "d-8")).signed_by == ""
    with pytest.raises(Refusal, match="answers nobody"):
        RequestGate("b", "board", CLOSED, [], 300.0, 12).admit_discover(discover_payload(None, "d-9"))


def test_an_answer_stays_bounded_and_the_pusher_checks_every_field():
    many = tuple(PipelineInfo(f"pipeline-{n:03d}" + "p" * 100, "running", "m" * 128, "v" * 128, "a" * 64)
                 for n in range(64))
    answer = BoardAnswer("d-1", "board", "0123456789abcdef", "0.1.0", ("g1",), many)
    payload = encode_answer(answer)
    assert len(payload) <= MAX_ANSWER_BYTES
    parsed = parse_answer("edge/board/fleet/answer", payload, "edge")
    assert parsed.truncated and 0 < len(parsed.pipelines) < 64 and parsed.groups == ("g1",)
    good = json.loads(encode_answer(BoardAnswer("d-1", "board", "0123456789abcdef", "0.1.0", (), ())))
    for what, topic, change in [
        ("another device's topic", "edge/other/fleet/answer", {}),
        ("a topic that is not an answer's", "edge/board/fleet/answer/x", {}),
        ("no instance", "edge/board/fleet/answer", {"instance": None}),
        ("a bad sha256", "edge/board/fleet/answer", {"pipelines": [{"name": "cam", "model": {"sha256": "xyz"}}]}),
        ("groups not a list", "edge/board/fleet/answer", {"groups": "g1"}),
        ("a huge version", "edge/board/fleet/answer", {"agent_version": "9" * 1000}),
    ]:
        with pytest.raises(ProtocolError):
            parse_answer(topic, json.dumps({**good, **change}).encode(), "edge")
            pytest.fail(what)


# ------------------------------------------------------------------ real boards

class Mallory:
    """A plain MQTT client on the same broker: it sees every discover request and publishes whatever it likes."""

    def __init__(self, broker):
        self.requests: list[dict] = []
        self.reactions: list = []
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                  client_id=f"mallory-{time.monotonic_ns()}")
        subscribed = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(DISCOVER_TOPIC, 1)])
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert subscribed.wait(10)

    def _on_message(self, client, userdata, message) -> None:
        request = json.loads(message.payload)
        self.requests.append(request)
        for react in list(self.reactions):
            react(request)

    def publish(self, topic: str, payload: str | bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def send(self, topic: str, payload: str | bytes) -> None:
        """From paho's thread (a reaction): queued, not waited for (the wait would block the acknowledgement)."""
        self.client.publish(topic, payload, qos=1)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def clear_retained(mallory: Mallory, devices: list[str]) -> None:
    """What a wildcard subscriber on RabbitMQ gets of the boards' retained messages: nothing."""
    for device in devices:
        for kind in ("state", "status"):
            mallory.publish(f"edge/{device}/{kind}", b"", retain=True)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, session_broker, keys):
    folder = keys["folder"]
    v1 = make_bundle(folder / "v1.eab", DEMO_MODEL, keys["dev"], "1.0")
    trusted = [folder / "dev.pub"]
    quiet = {"state_interval_s": 3600, "max_fps": 2}
    configs = []
    for device, group in SIGNED_BOARDS.items():
        configs.append(agent_config(folder / f"{device}.toml", session_broker, device, v1, trusted,
                                    top=f'groups = ["{group}"]', models="max_discovery_answers_per_minute = 60",
                                    **quiet))
    for n in (1, 2):  # one device id, two boards: own client ids and folders, or the broker would keep only one
        twin = tmp_path_factory.mktemp(f"twin{n}")
        configs.append(agent_config(twin / "disc-dup.toml", session_broker, "disc-dup", v1, trusted,
                                    top='groups = ["gdup"]', mqtt=f'client_id = "disc-dup-twin-{n}"', **quiet))
    configs.append(agent_config(folder / f"{OPEN_BOARD}.toml", session_broker, OPEN_BOARD, DEMO_MODEL,
                                top='groups = ["gopen"]\nallow_unsigned_models = true',
                                models=f"max_discovery_answers_per_minute = {OPEN_RATE}", **quiet))
    devices = [*SIGNED_BOARDS, "disc-dup", OPEN_BOARD]
    collector = Collector(session_broker, ["edge/+/cam/predictions", "edge/+/state", "edge/+/fleet/answer",
                                           "edge/+/models/events"])
    agents = [AgentProcess(["run", "--config", str(config)], folder) for config in configs]
    mallory = Mallory(session_broker)
    try:
        assert wait_until(lambda: all(predictions(collector, d) for d in devices), 90), \
            [d for d in devices if not predictions(collector, d)]
        assert wait_until(lambda: all(collector.payloads(f"edge/{d}/state") for d in devices), 20)
        clear_retained(mallory, devices)
        yield {"broker": session_broker, "collector": collector, "mallory": mallory, "folder": folder,
               "agents": agents, "devices": devices}
    finally:
        mallory.stop()
        for agent in agents:
            agent.kill()
        collector.stop()


def cli(fleet, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    broker = fleet["broker"]
    return subprocess.run([sys.executable, "-m", "edge_agent", *args, "--broker", broker.address], capture_output=True,
                          text=True, cwd=REPO, timeout=timeout_s)


def signed(fleet) -> list[str]:
    return ["--key", str(fleet["folder"] / "dev.key")]


def answers_of(fleet, device: str) -> list[dict]:
    return fleet["collector"].json(f"edge/{device}/fleet/answer")


def test_without_retained_state_only_discovery_finds_the_group(fleet):
    retained_only = cli(fleet, "fleet", "list", "--group", "g1", "--discover-s", "0")
    assert retained_only.returncode == 1, "the retained state is really gone, as a RabbitMQ wildcard subscriber sees it"
    assert "no device announces group 'g1'" in retained_only.stderr

    found = cli(fleet, "fleet", "list", "--group", "g1", "--json", "--discover-s", DISCOVER_S, *signed(fleet))
    assert found.returncode == 0, found.stderr
    listing = json.loads(found.stdout)
    assert [d["device"] for d in listing["devices"]] == ["disc-a1", "disc-a2"], "the members, and only them"
    for device in listing["devices"]:
        assert device["sources"] == ["answer"] and device["status"] == "online" and device["groups"] == ["g1"]
        assert device["agent_version"] and not device["duplicate"]
        assert device["pipelines"] == [{"name": "cam", "status": "running",
                                        "model": {"name": "digits", "version": "1.0", "sha256": INT8_SHA}}]
    assert not answers_of(fleet, "disc-b1"), "a board of another group does not answer a group's discovery"

    table = cli(fleet, "fleet", "list", "--discover-s", DISCOVER_S, *signed(fleet))
    assert table.returncode == 1, "two boards use one device id: reported"
    for device in fleet["devices"]:
        assert device in table.stdout
    assert "DUPLICATE ID" in table.stdout and "disc-dup" in table.stderr


def test_a_signed_board_ignores_an_unsigned_discovery(fleet):
    result = cli(fleet, "fleet", "list", "--group", "g1", "--discover-s", DISCOVER_S)
    assert result.returncode == 1
    assert "no device announces group 'g1'" in result.stderr and "--key" in result.stderr, \
        "the message says that a board with trusted_keys ignores an unsigned discovery"


def test_push_to_a_group_found_by_discovery_and_models_list_of_the_group(fleet, keys, tmp_path):
    v2 = make_bundle(tmp_path / "v2.eab", DEMO_FLOAT_MODEL, keys["dev"], "2.0")
    started = time.monotonic()
    result = cli(fleet, "push", str(v2), "--group", "g1", "--json", *signed(fleet))  # the default --discover-s
    took_s = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    table = json.loads(result.stdout)
    assert [(r["device"], r["result"]) for r in table] == [("disc-a1", "activated"), ("disc-a2", "activated")]
    assert "2 answered discovery within 6 s" in result.stderr
    assert took_s >= 6, "the pusher listened the whole --discover-s (6 s by default)"
    print(f"push --group to 2 boards without retained state: {took_s:.1f} s for the command (6 s of it discovery)")
    collector = fleet["collector"]
    assert wait_until(lambda: all(predictions(collector, d)[-1]["model"]["sha256"] == FLOAT_SHA
                                  for d in ("disc-a1", "disc-a2")), 20)
    assert predictions(collector, "disc-b1")[-1]["model"]["sha256"] == INT8_SHA, "another group is not touched"

    listed = cli(fleet, "models", "list", "--group", "g1", "--json", "--discover-s", DISCOVER_S, *signed(fleet))
    assert listed.returncode == 0, listed.stderr
    devices = json.loads(listed.stdout)["devices"]
    assert sorted(devices) == ["disc-a1", "disc-a2"]
    for device in devices.values():
        active = [m for m in device["pipelines"]["cam"] if m["role"] == "active"]
        assert [(m["version"], m["sha256"]) for m in active] == [("2.0", FLOAT_SHA)]


def test_where_the_broker_delivers_retained_state_discovery_ends_once_every_board_answered(fleet):
    """After the push, disc-a1 and disc-a2 published their state again (retained): mosquitto hands it to the
    wildcard subscription, so the pusher knows whom to wait for and stops once both have answered."""
    collector = fleet["collector"]
    assert wait_until(lambda: all(json.loads(collector.payloads(f"edge/{d}/state")[-1])["pipelines"]["cam"]["model"]
                                  ["sha256"] == FLOAT_SHA for d in ("disc-a1", "disc-a2")), 20)
    started = time.monotonic()
    result = cli(fleet, "fleet", "list", "--group", "g1", "--json", "--discover-s", "30", *signed(fleet))
    took_s = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    devices = json.loads(result.stdout)["devices"]
    assert [(d["device"], d["sources"]) for d in devices] == [("disc-a1", ["answer", "state"]),
                                                              ("disc-a2", ["answer", "state"])]
    assert all(d["answer_s"] < 5 for d in devices)
    assert took_s < 20, f"{took_s:.1f} s: it listened the whole --discover-s although every board had answered"
    print(f"fleet list of 2 boards with retained state: {took_s:.2f} s for the command; answers after "
          f"{', '.join(str(d['answer_s']) for d in devices)} s")


def test_two_boards_with_one_device_id_are_reported_and_neither_is_pushed(fleet, keys, tmp_path):
    listed = cli(fleet, "fleet", "list", "--group", "gdup", "--json", "--discover-s", DISCOVER_S, *signed(fleet))
    assert listed.returncode == 1
    listing = json.loads(listed.stdout)
    assert listing["duplicates"] == ["disc-dup"]
    assert [(d["device"], d["duplicate"], d["answers"]) for d in listing["devices"]] == [("disc-dup", True, 2)]
    assert "give each board its own device_id" in listed.stderr

    events_before = len(events(fleet["collector"], "disc-dup"))
    bundle = make_bundle(tmp_path / "dup.eab", DEMO_FLOAT_MODEL, keys["dev"], "3.0")
    pushed = cli(fleet, "push", str(bundle), "--group", "gdup", "--json", "--discover-s", DISCOVER_S, *signed(fleet))
    assert pushed.returncode == 1
    assert json.loads(pushed.stdout) == [{"device": "disc-dup", "result": "not sent", "previous": None, "new": None,
                                          "seconds": 0.0, "reason": "2 boards answer as device disc-dup: give each "
                                                                    "board its own device_id, then try again"}]
    time.sleep(1)
    assert len(events(fleet["collector"], "disc-dup")) == events_before, "no request reached the twins"
    assert predictions(fleet["collector"], "disc-dup")[-1]["model"]["sha256"] == INT8_SHA


def test_an_empty_group_is_a_clear_error(fleet, keys, tmp_path):
    bundle = make_bundle(tmp_path / "none.eab", DEMO_FLOAT_MODEL, keys["dev"], "4.0")
    for command in (["push", str(bundle), "--group", "nosuch"], ["fleet", "list", "--group", "nosuch"],
                    ["models", "list", "--group", "nosuch"]):
        result = cli(fleet, *command, "--discover-s", "1", *signed(fleet))
        assert result.returncode == 1, command
        assert "no device announces group 'nosuch'" in result.stderr and "Traceback" not in result.stderr
        assert "Check the boards' `groups` setting" in result.stderr
    bad = cli(fleet, "fleet", "list", "--discover-s", "-1")
    assert bad.returncode == 2 and "--discover-s" in bad.stderr


def test_forged_and_malformed_answers_are_ignored_counted_and_logged_once(fleet):
    mallory = fleet["mallory"]

    def forge(request: dict) -> None:
        request_id = request.get("request_id")
        good = {"request_id": request_id, "instance": "feedfacefeedface", "agent_version": "6.6.6",
                "pipelines": [], "truncated": False}
        mallory.send("edge/junk/fleet/answer", b"\x00 not json")
        mallory.send("edge/junk/fleet/answer", b"[1, 2, 3]")
        mallory.send("edge/disc-a1/fleet/answer", json.dumps({**good, "device": "disc-zz", "groups": ["g1"]}))
        mallory.send("edge/junk/fleet/answer", json.dumps({**good, "device": "junk", "instance": "NOT HEX"}))
        # well formed, but the intruder is not in g1: it must not become a target
        mallory.send("edge/intruder/fleet/answer", json.dumps({**good, "device": "intruder", "groups": ["g2"]}))

    mallory.reactions.append(forge)
    try:
        result = cli(fleet, "fleet", "list", "--group", "g1", "--json", "--discover-s", DISCOVER_S, *signed(fleet))
    finally:
        mallory.reactions.remove(forge)
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    assert [d["device"] for d in listing["devices"]] == ["disc-a1", "disc-a2"]
    assert listing["malformed_answers"] == 4
    assert result.stderr.count("a discovery answer ignored") == 1, "logged once, then counted"
    assert "4 discovery answers ignored in all" in result.stderr


def answered(fleet, device: str, request_id: str) -> int:
    return sum(a.get("request_id") == request_id for a in answers_of(fleet, device))


def test_replayed_foreign_and_misbound_discovers_get_no_answer_from_signed_boards(fleet, keys):
    mallory, collector = fleet["mallory"], fleet["collector"]
    signed_boards = [*SIGNED_BOARDS, "disc-dup"]
    twins = {"disc-dup": 2}
    recorded = discover_payload(keys["dev"], "disc-recorded")
    mallory.publish(DISCOVER_TOPIC, recorded)
    assert wait_until(lambda: all(answered(fleet, d, "disc-recorded") == twins.get(d, 1) for d in signed_boards), 10)
    mallory.publish(DISCOVER_TOPIC, recorded)  # the replay
    mallory.publish(DISCOVER_TOPIC, discover_payload(keys["other"], "disc-foreign"))
    mallory.publish(DISCOVER_TOPIC, discover_payload(keys["dev"], "disc-misbound", device="disc-a1"))
    mallory.publish(DISCOVER_TOPIC, discover_payload(None, "disc-unsigned"))
    # a board takes its requests in order: once it answered this one, it has handled those before it
    mallory.publish(DISCOVER_TOPIC, discover_payload(keys["dev"], "disc-after"))
    assert wait_until(lambda: all(answered(fleet, d, "disc-after") == twins.get(d, 1) for d in signed_boards), 10)
    for device in signed_boards:
        assert answered(fleet, device, "disc-recorded") == twins.get(device, 1), f"{device} answered a replay"
        for request_id in ("disc-foreign", "disc-misbound", "disc-unsigned"):
            assert answered(fleet, device, request_id) == 0, f"{device} answered {request_id}"
    mark = {d: len(predictions(collector, d)) for d in fleet["devices"]}
    assert wait_until(lambda: all(len(predictions(collector, d)) > mark[d] for d in fleet["devices"]), 20), \
        "every board keeps publishing"


def test_a_flood_of_discovers_gets_bounded_answers_and_the_owner_still_gets_its_own(fleet, keys):
    mallory = fleet["mallory"]
    open_agent = fleet["agents"][-1]
    flood = 200
    for n in range(flood):
        mallory.client.publish(DISCOVER_TOPIC, discover_payload(None, f"flood-{n}"), qos=1)
    mallory.publish(DISCOVER_TOPIC, discover_payload(keys["dev"], "flood-owner"))
    signed_boards = [*SIGNED_BOARDS, "disc-dup"]
    assert wait_until(lambda: all(answered(fleet, d, "flood-owner") for d in signed_boards), 20), \
        "the owner's signed request is answered right behind the flood"
    assert wait_until(lambda: "requests in the last minute" in open_agent.stderr, 10), \
        "the open board handled the flood and held answers back"
    time.sleep(1)
    flood_ids = {f"flood-{n}" for n in range(flood)}
    open_answers = sum(a.get("request_id") in flood_ids for a in answers_of(fleet, OPEN_BOARD))
    assert open_answers <= OPEN_RATE, \
        f"{flood} requests, {open_answers} answers: at most max_discovery_answers_per_minute = {OPEN_RATE}"
    for device in signed_boards:
        assert not any(a.get("request_id") in flood_ids for a in answers_of(fleet, device)), \
            "a signed board answers no unsigned request"
    result = cli(fleet, "fleet", "list", "--group", "g1", "--json", "--discover-s", DISCOVER_S, *signed(fleet))
    assert result.returncode == 0, result.stderr
    assert [d["device"] for d in json.loads(result.stdout)["devices"]] == ["disc-a1", "disc-a2"], \
        "the flood used up none of the signed boards' answers"
    for agent in fleet["agents"]:
        assert agent.process.poll() is None, agent.stderr[-2000:]
    held_back_lines = open_agent.stderr.count("fleet discovery: more than 3 requests in the last minute")
    assert 1 <= held_back_lines <= 2, "the flood is logged once a minute, not once a request"
