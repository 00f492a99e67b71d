"""A group push sent once for the group: real agents against a real mosquitto whose `$SYS/broker/bytes/received`
meters what the pusher hands the broker.

Boards b0-b2 are in the groups fleet and meter; the board `lossy` only in fleet, and the broker's ACL hides chunk 1
of every group push from it (`topic deny .../chunk/1` for its user): a board whose group subscription drops a chunk,
which it must ask for and get by unicast. Everything else here is as a user runs it: `edge-agent push --group`, keys,
signed bundles.
`BROADCAST_BOARDS=20 pytest -s tests/test_group_broadcast.py -k once` prints the bytes for 20 boards."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from support import DEMO_FLOAT_MODEL, DEMO_MODEL, AgentProcess, Broker, Collector, free_port, wait_until
from crafted_models import make_bundle, make_keys
from push_support import agent_config, events, predictions, push_cli, send_end
from edge_agent.delivery.fleet_protocol import EVERY_DEVICE
from edge_agent.delivery.signed_request import sign_request
from edge_agent.delivery.update_protocol import GROUP_BEGIN, describe_bundle, group_begin_params, group_push_topic

# the boards metered (3 in `make test`; BROADCAST_BOARDS=20 for the README's numbers)
METERED = [f"b{n:02d}" for n in range(int(os.environ.get("BROADCAST_BOARDS", "3")))]
LOSSY = "lossy"
BYTES = "$SYS/broker/bytes/received"
FLOAT_SHA = hashlib.sha256(DEMO_FLOAT_MODEL.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    folder = tmp_path_factory.mktemp("broadcast")
    passwd = folder / "passwd"
    (folder / "lossy.password").write_text("lossy pass\n")
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), LOSSY, "lossy pass"], check=True, capture_output=True)
    acl = folder / "acl"
    acl.write_text("topic readwrite #\ntopic read $SYS/#\n"  # anonymous clients: everything
                   f"user {LOSSY}\ntopic deny edge/fleet/group/+/push/+/chunk/1\ntopic readwrite #\n")
    broker = Broker(folder, port=free_port())
    broker.own_config = (f"listener {broker.port} 127.0.0.1\nallow_anonymous true\npassword_file {passwd}\n"
                         f"acl_file {acl}\nsys_interval 1\n")
    broker.start()
    keys = make_keys(folder, "dev")
    v1 = make_bundle(folder / "v1.eab", DEMO_MODEL, keys["dev"], "1.0")
    collector = Collector(broker, ["edge/+/cam/predictions", "edge/+/state", "edge/+/models/events", BYTES])
    agents = []
    for device in METERED + [LOSSY]:
        groups = '["fleet"]' if device == LOSSY else '["fleet", "meter"]'
        login = f'username = "{LOSSY}"\npassword_file = "{folder / "lossy.password"}"' if device == LOSSY else ""
        config = agent_config(folder / f"{device}.toml", broker, device, v1, [folder / "dev.pub"],
                              top=f"groups = {groups}", max_fps=1, state_interval_s=1, mqtt=login)
        agents.append(AgentProcess(["run", "--config", str(config)], folder))
    try:
        assert wait_until(lambda: all(predictions(collector, d) for d in METERED + [LOSSY]), 60), \
            [a.stderr()[-2000:] for a in agents]
        yield {"broker": broker, "collector": collector, "folder": folder, "key": keys["dev"], "agents": agents}
    finally:
        collector.stop()
        for agent in agents:
            agent.kill()
        broker.stop()


def broker_bytes(collector: Collector) -> tuple[int, float]:
    """The broker's bytes received from a $SYS sample published after this call (sys_interval 1), and when
    it arrived (monotonic s)."""
    seen = len(collector.payloads(BYTES))
    assert wait_until(lambda: len(collector.payloads(BYTES)) >= seen + 1, 10), "no $SYS sample"
    seen = len(collector.payloads(BYTES))  # the first one may have been taken before the call
    assert wait_until(lambda: len(collector.payloads(BYTES)) >= seen + 1, 10), "no $SYS sample"
    return int(collector.payloads(BYTES)[-1]), time.monotonic()


def background_rate(collector: Collector, window_s: float = 5.0) -> float:
    """Bytes per second the broker receives with no push going on (predictions, state)."""
    start, start_s = broker_bytes(collector)
    time.sleep(window_s)
    end, end_s = broker_bytes(collector)
    return (end - start) / (end_s - start_s)


def state_counter(collector: Collector, device: str, name: str) -> int:
    return collector.json(f"edge/{device}/state")[-1].get("models", {}).get(name, 0)


def serving(collector: Collector, device: str) -> str:
    return predictions(collector, device)[-1]["model"]["sha256"]


def test_a_group_push_hands_the_broker_the_bundle_once_not_once_per_board(fleet):
    collector, folder, broker = fleet["collector"], fleet["folder"], fleet["broker"]
    key_file = str(folder / "dev.key")
    measured = {}
    rate = background_rate(collector)
    for mode, model, version in (("unicast", DEMO_FLOAT_MODEL, "2.0"), ("broadcast", DEMO_FLOAT_MODEL, "3.0")):
        bundle = make_bundle(folder / f"meter-{version}.eab", model, fleet["key"], version)
        before, before_s = broker_bytes(collector)
        started = time.monotonic()
        result = push_cli(broker, bundle, "--group", "meter", "--json", "--key", key_file, "--discover-s", "2",
                          *(["--unicast"] if mode == "unicast" else []))
        command_s = time.monotonic() - started
        after, after_s = broker_bytes(collector)
        assert result.returncode == 0, result.stdout + result.stderr
        table = json.loads(result.stdout)
        assert [(r["device"], r["result"]) for r in table] == [(d, "activated") for d in METERED]
        size = bundle.stat().st_size
        push_bytes = after - before - rate * (after_s - before_s)  # what the push added to the background
        measured[mode] = push_bytes / size
        print(f"{mode}: push of {size:,} bytes to {len(METERED)} boards in {command_s:.1f} s (command): "
              f"{after - before:,} bytes received by the broker in {after_s - before_s:.1f} s, "
              f"{push_bytes:,.0f} of them the push's ({rate:,.0f} B/s background) = {measured[mode]:.2f} x the bundle")
    assert wait_until(lambda: all(serving(collector, d) == FLOAT_SHA for d in METERED), 15)
    # the push's bytes include its discovery, begin (with the chunk hashes), ends and the boards' events
    assert measured["unicast"] > len(METERED) - 0.2, measured
    assert measured["broadcast"] < 1.3, measured
    assert not any(e["event"] == "missing" for d in METERED for e in events(collector, d)), \
        "nothing was lost, so no board asked for a chunk"


def test_a_board_whose_subscription_drops_a_chunk_gets_it_by_unicast(fleet):
    collector, folder, broker = fleet["collector"], fleet["folder"], fleet["broker"]
    bundle = make_bundle(folder / "fleet-4.0.eab", DEMO_FLOAT_MODEL, fleet["key"], "4.0")
    result = push_cli(broker, bundle, "--group", "fleet", "--json", "--key", str(folder / "dev.key"),
                      "--discover-s", "2", "--chunk-kb", "32")
    assert result.returncode == 0, result.stdout + result.stderr
    table = json.loads(result.stdout)
    assert [(r["device"], r["result"]) for r in table] == [(d, "activated") for d in METERED + [LOSSY]]
    transfer = next(e["transfer_id"] for e in events(collector, LOSSY) if e["event"] == "activated"
                    and e.get("new", {}).get("version") == "4.0")
    asked = [e["missing"] for e in events(collector, LOSSY) if e["event"] == "missing" and e["transfer_id"] == transfer]
    assert asked == [[1]], "the board the ACL hides chunk 1 from asked for it, and only for it"
    for device in METERED:
        assert not [e for e in events(collector, device) if e["event"] == "missing" and e["transfer_id"] == transfer]
    assert wait_until(lambda: all(serving(collector, d) == FLOAT_SHA for d in METERED + [LOSSY]), 15)


def _client(broker: Broker) -> mqtt.Client:
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"forger-{time.monotonic_ns()}")
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client


def test_stray_and_forged_broadcast_chunks_are_dropped_counted_and_break_nothing(fleet):
    collector, broker, key = fleet["collector"], fleet["broker"], fleet["key"]
    client = _client(broker)
    try:
        counts = {d: state_counter(collector, d, "dropped_chunks") for d in METERED}
        # a chunk of a transfer nobody began: every member drops and counts it
        client.publish(group_push_topic("edge", "meter", "push-nobody-began-this", "chunk/0"), b"x" * 1024, qos=1)
        assert wait_until(lambda: all(state_counter(collector, d, "dropped_chunks") == counts[d] + 1
                                      for d in METERED), 10)

        # a group push to b0 alone, by hand; a forged chunk 0 (right length, wrong bytes) arrives first
        content = make_bundle(fleet["folder"] / "hand-5.0.eab", DEMO_MODEL, key, "5.0").read_bytes()
        transfer_id = "push-by-hand-broadcast"
        begin = describe_bundle(transfer_id, content, 1024)
        signed = json.dumps(sign_request(key, GROUP_BEGIN, EVERY_DEVICE, transfer_id,
                                         group_begin_params(begin, "meter", ["b00"])))
        client.publish(group_push_topic("edge", "meter", transfer_id, "begin"), signed, qos=1)
        assert wait_until(lambda: any(e["event"] == "accepted" and e.get("transfer_id") == transfer_id
                                      for e in events(collector, "b00")), 10)
        for device in ("b01", "b02"):  # not named: not even an answer
            assert not [e for e in events(collector, device) if transfer_id in (e.get("transfer_id"), e.get("claimed_id"))]
        dropped = state_counter(collector, "b00", "dropped_chunks")
        client.publish(group_push_topic("edge", "meter", transfer_id, "chunk/0"), b"\0" * 1024, qos=1)
        for index in range(begin.chunks):
            client.publish(group_push_topic("edge", "meter", transfer_id, f"chunk/{index}"),
                           content[index * 1024:(index + 1) * 1024], qos=1)
        # the replayed begin is ignored (the transfer goes on untouched)
        client.publish(group_push_topic("edge", "meter", transfer_id, "begin"), signed, qos=1)
        time.sleep(1)
        send_end(client, key, "b00", transfer_id)
        assert wait_until(lambda: any(e.get("transfer_id") == transfer_id and e["event"] in ("activated", "rejected")
                                      for e in events(collector, "b00")), 30)
        final = [e for e in events(collector, "b00") if e.get("transfer_id") == transfer_id][-1]
        assert final["event"] == "activated", final
        assert [e["event"] for e in events(collector, "b00") if e.get("transfer_id") == transfer_id] == \
            ["accepted", "received", "verified", "activated"]
        assert wait_until(lambda: state_counter(collector, "b00", "dropped_chunks") >= dropped + 1, 10)
    finally:
        client.disconnect()
        client.loop_stop()


def test_an_unsigned_group_begin_is_ignored_by_signed_boards(fleet):
    collector, broker = fleet["collector"], fleet["broker"]
    client = _client(broker)
    try:
        content = b"not even a bundle: the begin is refused before any byte counts" * 100
        transfer_id = "push-unsigned-broadcast"
        begin = describe_bundle(transfer_id, content, 1024)
        client.publish(group_push_topic("edge", "meter", transfer_id, "begin"),
                       json.dumps(group_begin_params(begin, "meter", METERED)), qos=1)
        assert wait_until(lambda: all(any(e.get("claimed_id") == transfer_id for e in events(collector, d))
                                      for d in METERED), 10), "each named board says why (without the id)"
        for device in METERED:
            answers = [e for e in events(collector, device) if transfer_id in (e.get("transfer_id"), e.get("claimed_id"))]
            assert [e["event"] for e in answers] == ["rejected"]
            assert "not signed" in answers[0]["reason"] and "transfer_id" not in answers[0]
        before = {d: state_counter(collector, d, "dropped_chunks") for d in METERED}
        client.publish(group_push_topic("edge", "meter", transfer_id, "chunk/0"), content[:1024], qos=1)
        assert wait_until(lambda: all(state_counter(collector, d, "dropped_chunks") == before[d] + 1
                                      for d in METERED), 10), "its chunks belong to no transfer"
    finally:
        client.disconnect()
        client.loop_stop()


def test_a_group_added_by_a_reload_gets_its_group_pushes(tmp_path, session_broker, collect, agent_process):
    keys = make_keys(tmp_path, "dev")
    v1 = make_bundle(tmp_path / "v1.eab", DEMO_MODEL, keys["dev"], "1.0")
    v2 = make_bundle(tmp_path / "v2.eab", DEMO_FLOAT_MODEL, keys["dev"], "2.0")
    collector = collect(session_broker, ["edge/reloaded/cam/predictions", "edge/reloaded/state"])
    config = agent_config(tmp_path / "reloaded.toml", session_broker, "reloaded", v1, [tmp_path / "dev.pub"],
                          top='groups = ["before"]', max_fps=2)
    agent = agent_process("run", "--config", str(config))
    assert wait_until(lambda: predictions(collector, "reloaded"), 60), agent.stderr()[-2000:]
    config.write_text(config.read_text().replace('groups = ["before"]', 'groups = ["before", "added"]'))
    agent.signal(signal.SIGHUP)
    assert wait_until(lambda: "added" in collector.json("edge/reloaded/state")[-1]["groups"], 15)
    result = push_cli(session_broker, v2, "--group", "added", "--json", "--key", str(tmp_path / "dev.key"),
                      "--discover-s", "2")
    assert result.returncode == 0, result.stdout + result.stderr + agent.stderr()[-2000:]
    assert [(r["device"], r["result"]) for r in json.loads(result.stdout)] == [("reloaded", "activated")]
