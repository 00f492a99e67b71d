"""Issue 10's attacks, each run as a client on the same (default, credential-less) mosquitto against a real
agent child with trusted_keys: rollback by anyone, replayed and stale requests, abort and chunks by a
bystander, a squatted transfer slot, a downgrade, a zip bomb (peak RSS measured from /proc/PID/status),
requests built to blow up logs and events, a begin flood. After each, the board is unaffected: the
model it serves is unchanged, it keeps publishing, and a signed push still works."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from support import DEMO_FLOAT_MODEL, DEMO_MODEL, REPO, AgentProcess, Collector, wait_until
from crafted_models import MB, bomb_bundle, deflated_zeros, make_bundle, make_keys
from edge_agent.delivery.signed_request import sign_request
from edge_agent.delivery.update_protocol import describe_bundle, push_topic
from push_support import agent_config, events, predictions, push, send_begin, wait_serving

DEVICE = "target"
BASE = f"edge/{DEVICE}/models"
INT8_SHA = hashlib.sha256(DEMO_MODEL.read_bytes()).hexdigest()
FLOAT_SHA = hashlib.sha256(DEMO_FLOAT_MODEL.read_bytes()).hexdigest()
RSS_MARGIN_MB = 20


@pytest.fixture(scope="module")
def board(tmp_path_factory, session_broker):
    """One agent trusting `dev` only, serving the int8 demo as version 2.0; `mallory` is a key it does not trust."""
    folder = tmp_path_factory.mktemp("target")
    keys = make_keys(folder, "dev", "mallory")
    v2 = make_bundle(folder / "v2.eab", DEMO_MODEL, keys["dev"], "2.0")
    config = agent_config(folder / "target.toml", session_broker, DEVICE, v2, [folder / "dev.pub"],
                          models="transfer_timeout_s = 8\nprobation_s = 0\nmax_begins_per_minute = 200")
    collector = Collector(session_broker, [f"edge/{DEVICE}/#"])
    agent = AgentProcess(["run", "--config", str(config)], folder)
    attacker = Attacker(session_broker)
    try:
        wait_serving(collector, DEVICE, INT8_SHA)
        yield {"folder": folder, "keys": keys, "collector": collector, "agent": agent, "broker": session_broker,
               "attacker": attacker, "state": folder / f"{DEVICE}-state"}
    finally:
        attacker.stop()
        agent.kill()
        collector.stop()


class Attacker:
    """A plain MQTT client with no credentials and no trusted key: it sees every push (push/+/begin) and
    publishes whatever it likes."""

    def __init__(self, broker):
        self.seen: list[tuple[str, bytes]] = []
        self.reactions: list = []  # callables (topic, payload) run on every message seen
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"mallory-{time.monotonic_ns()}")
        subscribed = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(f"{BASE}/push/+/begin", 1), (f"{BASE}/rollback", 1)])
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert subscribed.wait(10)

    def _on_message(self, client, userdata, message) -> None:
        self.seen.append((message.topic, bytes(message.payload)))
        for react in list(self.reactions):
            react(message.topic, bytes(message.payload))

    def publish(self, topic: str, payload: str | bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def serving(board) -> dict:
    return predictions(board["collector"], DEVICE)[-1]["model"]


def unaffected(board, sha256: str | None = None) -> None:
    """The board keeps publishing, with the same model it served before (or `sha256`), and stays up."""
    sha = sha256 or serving(board)["sha256"]
    wait_serving(board["collector"], DEVICE, sha, count=5)
    assert board["agent"].process.poll() is None


def answers(board, request_id: str) -> list[dict]:
    return [e for e in events(board["collector"], DEVICE)
            if request_id in (e.get("transfer_id"), e.get("request_id"), e.get("claimed_id"))]


def vm_hwm_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


def test_rollback_by_anyone_replayed_or_stale_is_refused_and_a_real_one_keeps_the_model_it_leaves(board):
    attacker, dev = board["attacker"], board["keys"]["dev"]
    v3 = make_bundle(board["folder"] / "v3.eab", DEMO_FLOAT_MODEL, dev, "3.0")
    (result,) = push(board["broker"], v3, [DEVICE], key=dev)
    assert result.result == "activated", result
    unaffected(board, FLOAT_SHA)
    before = len(predictions(board["collector"], DEVICE))

    attacker.publish(f"{BASE}/rollback", json.dumps({"request_id": "x"}))  # the attack, verbatim
    forged = sign_request(board["keys"]["mallory"], "rollback", DEVICE, "mallory-1", {"request_id": "mallory-1"})
    attacker.publish(f"{BASE}/rollback", json.dumps(forged))
    stale = sign_request(dev, "rollback", DEVICE, "old-1", {"request_id": "old-1"},
                         issued_at_ms=int(time.time() * 1000) - 3_600_000)  # recorded an hour ago
    attacker.publish(f"{BASE}/rollback", json.dumps(stale))
    other_board = sign_request(dev, "rollback", "somebody-else", "elsewhere-1", {"request_id": "elsewhere-1"})
    attacker.publish(f"{BASE}/rollback", json.dumps(other_board))
    assert wait_until(lambda: all(answers(board, i) for i in ("x", "mallory-1", "old-1", "elsewhere-1")), 10)
    reasons = {i: answers(board, i)[0] for i in ("x", "mallory-1", "old-1", "elsewhere-1")}
    assert all(e["event"] == "rejected" and "request_id" not in e for e in reasons.values()), reasons
    assert "is not signed" in reasons["x"]["reason"]
    assert "which is not trusted here" in reasons["mallory-1"]["reason"]
    assert "behind this board's clock" in reasons["old-1"]["reason"]
    assert "does not match this request" in reasons["elsewhere-1"]["reason"]
    unaffected(board, FLOAT_SHA)
    assert all(p["model"]["sha256"] == FLOAT_SHA for p in predictions(board["collector"], DEVICE)[before:])
    # the tool without --key is told why at once (the refusal names its request id only as claimed)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "edge_agent", "models", "rollback", "--device", DEVICE,
                             "--broker", board["broker"].address], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 1 and "rejected: the rollback request is not signed" in result.stdout, result.stdout
    assert time.monotonic() - started < 15

    # the owner's rollback works; replaying its exact message later changes nothing
    real = sign_request(dev, "rollback", DEVICE, "owner-1", {"request_id": "owner-1", "pipeline": ""})
    board["collector"].client.publish(f"{BASE}/rollback", json.dumps(real), qos=1)
    assert wait_until(lambda: any(e["event"] == "rolled_back" for e in answers(board, "owner-1")), 20)
    unaffected(board, INT8_SHA)
    store = board["state"] / "models" / "cam"
    assert (store / next(f for f in store.iterdir() if f.name.startswith(hashlib.sha256(v3.read_bytes()).hexdigest()))).exists(), \
        "the rollback kept the model it left"
    record = json.loads((store / "active.json").read_text())
    assert [m["version"] for m in record["retired"]] == ["3.0"]
    attacker.publish(f"{BASE}/rollback", json.dumps(real))
    time.sleep(1)
    assert len([e for e in answers(board, "owner-1")]) == 1, "the replay was dropped without an answer"
    unaffected(board, INT8_SHA)


def test_a_bystander_cannot_abort_or_break_a_push_nor_hold_the_slot_by_resending_its_begin(board):
    attacker, dev = board["attacker"], board["keys"]["dev"]
    ver = f"4.{time.monotonic_ns() % 1000}"
    bundle = make_bundle(board["folder"] / "v4.eab", DEMO_FLOAT_MODEL, dev, ver)

    handled: set[str] = set()

    def sabotage(topic: str, payload: bytes) -> None:
        transfer_id = topic.split("/")[-2]
        if not topic.endswith("/begin") or transfer_id in handled:  # it sees its own re-sent begins too
            return
        handled.add(transfer_id)
        for _ in range(3):  # re-send the (signed) begin: a replay
            attacker.client.publish(topic, payload, qos=1)
        attacker.client.publish(push_topic("edge", DEVICE, transfer_id, "abort"),
                                json.dumps({"transfer_id": transfer_id, "reason": "mallory", "abort_token": "guess"}), qos=1)
        attacker.client.publish(push_topic("edge", DEVICE, transfer_id, "chunk/999"), b"x" * 4096, qos=1)
        attacker.client.publish(push_topic("edge", DEVICE, transfer_id, "chunk/0"), b"\0" * 4096, qos=1)
        attacker.client.publish(push_topic("edge", DEVICE, transfer_id, "end"), json.dumps({"transfer_id": transfer_id}),
                                qos=1)

    attacker.reactions.append(sabotage)
    try:
        (result,) = push(board["broker"], bundle, [DEVICE], key=dev, chunk_size=4096, window=2)
    finally:
        attacker.reactions.remove(sabotage)
    assert result.result == "activated", result
    assert result.new["version"] == ver
    unaffected(board, FLOAT_SHA)
    assert "dropped a chunk that is not the transfer's" in board["agent"].stderr

    # a captured begin re-sent after its pusher went away does not re-arm the timeout: the slot frees itself
    content = make_bundle(board["folder"] / "v5.eab", DEMO_MODEL, dev, "5.0").read_bytes()
    begin = send_begin(board["collector"].client, dev, DEVICE, "squat-1", content, 4096)
    assert wait_until(lambda: any(e["event"] == "accepted" for e in answers(board, "squat-1")), 10)
    captured = next(p for t, p in attacker.seen if t.endswith("/squat-1/begin"))
    started = time.monotonic()
    while time.monotonic() - started < 10 and not any(e["event"] == "rejected" for e in answers(board, "squat-1")):
        attacker.publish(push_topic("edge", DEVICE, "squat-1", "begin"), captured)
        time.sleep(0.5)
    rejected = [e for e in answers(board, "squat-1") if e["event"] == "rejected"]
    assert rejected and "timed out" in rejected[0]["reason"], answers(board, "squat-1")
    assert begin.chunks > 1
    unaffected(board, FLOAT_SHA)


def test_a_signed_push_pre_empts_a_stalled_transfer(board):
    dev = board["keys"]["dev"]
    content = make_bundle(board["folder"] / "stalled.eab", DEMO_MODEL, dev, "6.0").read_bytes()
    send_begin(board["collector"].client, dev, DEVICE, "stalled-1", content, 4096)
    assert wait_until(lambda: any(e["event"] == "accepted" for e in answers(board, "stalled-1")), 10)
    time.sleep(2.5)  # a quarter of transfer_timeout_s (8 s) without progress
    bundle = make_bundle(board["folder"] / "v6.eab", DEMO_MODEL, dev, "6.1")
    (result,) = push(board["broker"], bundle, [DEVICE], key=dev)
    assert result.result == "activated", result
    stalled = [e for e in answers(board, "stalled-1") if e["event"] == "rejected"]
    assert stalled and "pre-empted by the signed transfer push-" in stalled[0]["reason"]
    assert "no progress" in stalled[0]["reason"]
    unaffected(board, INT8_SHA)


def test_no_downgrade_by_accident(board):
    dev = board["keys"]["dev"]
    active = serving(board)["version"]
    older = make_bundle(board["folder"] / "old.eab", DEMO_FLOAT_MODEL, dev, "0.1-old")
    (result,) = push(board["broker"], older, [DEVICE], key=dev)
    assert result.result == "rejected" and f"version 0.1-old is older than the active version {active}" in result.reason
    assert "--allow-downgrade" in result.reason
    unaffected(board, INT8_SHA)
    (result,) = push(board["broker"], older, [DEVICE], key=dev, allow_downgrade=True)
    assert result.result == "activated", result
    unaffected(board, FLOAT_SHA)
    newer = make_bundle(board["folder"] / "v7.eab", DEMO_MODEL, dev, "7.0")
    (result,) = push(board["broker"], newer, [DEVICE], key=dev)
    assert result.result == "activated"
    unaffected(board, INT8_SHA)


def test_a_zip_bomb_is_refused_in_bounded_time_and_memory(board):
    """The issue's bomb: an unsigned 1.5 MB bundle whose model.tflite inflates to 1.5 GiB (it declares 1 MB),
    pushed with a signed request (so it reaches the bundle check). The agent's peak RSS (VmHWM of the real
    child) stays within 20 MB of what it was while serving."""
    dev = board["keys"]["dev"]
    stream = deflated_zeros(1536 * MB)
    bomb = bomb_bundle(board["folder"] / "bomb.eab", board["folder"] / "v2.eab", stream, MB)
    pid = board["agent"].process.pid
    unaffected(board)
    before_mb = vm_hwm_mb(pid)
    started = time.monotonic()
    (result,) = push(board["broker"], bomb, [DEVICE], key=dev)
    seconds = time.monotonic() - started
    after_mb = vm_hwm_mb(pid)
    assert result.result == "rejected" and "is not signed" in result.reason, result
    assert after_mb - before_mb < RSS_MARGIN_MB, f"peak RSS {before_mb:.1f} -> {after_mb:.1f} MB"
    print(f"zip bomb ({bomb.stat().st_size / MB:.2f} MB -> 1536 MB): refused in {seconds:.2f} s (whole push); "
          f"agent VmHWM {before_mb:.1f} -> {after_mb:.1f} MB")
    # the same bomb from a client without a key never gets past begin
    attacker = board["attacker"]
    unsigned = describe_bundle("bomb-2", bomb.read_bytes(), 65536)
    attacker.publish(push_topic("edge", DEVICE, "bomb-2", "begin"), unsigned.to_json())
    assert wait_until(lambda: answers(board, "bomb-2"), 10)
    assert "is not signed" in answers(board, "bomb-2")[0]["reason"]
    unaffected(board)
    assert vm_hwm_mb(pid) - before_mb < RSS_MARGIN_MB


def test_requests_built_to_fill_logs_and_events_get_short_answers(board):
    attacker = board["attacker"]
    log_before = len(board["agent"].stderr)
    seen = len(events(board["collector"], DEVICE))
    attacker.publish(f"{BASE}/push/p-1/chunk/١", b"x")
    attacker.publish(f"{BASE}/push/p-2/begin", b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}")
    attacker.publish(f"{BASE}/push/p-3/begin", b'{"size": ' + b"7" * 5000 + b"}")
    attacker.publish(f"{BASE}/rollback", json.dumps({"request_id": "big", "pipeline": "P" * 5_000_000}))
    attacker.publish(f"{BASE}/rollback", json.dumps({"request_id": "wide\nFAKE LOG LINE", "pipeline": "Q" * 60_000}))
    attacker.publish(f"{BASE}/push/p-4/" + "z" * 60_000, b"{}")
    assert wait_until(lambda: len(events(board["collector"], DEVICE)) >= seen + 6, 10), \
        events(board["collector"], DEVICE)[seen:]
    fresh = events(board["collector"], DEVICE)[seen:]
    reasons = [e["reason"] for e in fresh if e["event"] == "rejected"]
    assert any("chunk index '١'" in r and "ASCII digits" in r for r in reasons), reasons
    assert any("nested too deeply" in r for r in reasons), reasons
    assert any("holds a number of 5,000 digits" in r for r in reasons), reasons
    assert any("is 5,000,0" in r and "bytes; at most 65,536 are accepted" in r for r in reasons), reasons
    assert all(len(json.dumps(e)) < 2000 for e in fresh), "every answer is short"
    log = board["agent"].stderr[log_before:]
    assert len(log) < 10_000 and "\nFAKE LOG LINE" not in log, log[-2000:]
    assert "P" * 200 not in log and "z" * 200 not in log

    # a flood of one kind: one log line per kind per minute, at most 30 answers a minute
    flood_start = len(board["agent"].stderr)
    seen = len(events(board["collector"], DEVICE))
    for n in range(300):
        attacker.client.publish(f"{BASE}/rollback", json.dumps({"request_id": f"flood-{n}"}), qos=1)
    time.sleep(3)
    flood_log = board["agent"].stderr[flood_start:]
    assert flood_log.count("model request refused") <= 2, flood_log[-2000:]
    assert len(events(board["collector"], DEVICE)) - seen <= 30
    unaffected(board)


def test_secrets_in_source_urls_and_pipelines_are_redacted_in_logs_and_state(tmp_path, session_broker, collect,
                                                                            agent_process):
    config = tmp_path / "secret.toml"
    config.write_text(f"""
device_id = "secretive"
state_dir = "{tmp_path / 'state'}"
[mqtt]
host = "{session_broker.host}"
port = {session_broker.port}
state_interval_s = 0.5
[pipelines.cam]
model = "{DEMO_MODEL}"
source = {{ uri = "rtsp://127.0.0.1:9/live?token=T0KEN-SECRET&access_token=ACCESS-SECRET", open_timeout_s = 1 }}
[pipelines.gst]
model = "{DEMO_MODEL}"
source = {{ uri = "rtspsrc location=rtsp://viewer:PW-SECRET@127.0.0.1:9/x user-pw=GST-SECRET ! decodebin ! appsink", open_timeout_s = 1 }}
""")
    collector = collect(session_broker, ["edge/secretive/state"])
    agent = agent_process("run", "--config", str(config))
    assert wait_until(lambda: any(json.loads(p)["pipelines"]["cam"]["source"]["error"]
                                  for p in collector.payloads("edge/secretive/state")), 30), agent.stderr
    state = b"".join(collector.payloads("edge/secretive/state")).decode()
    text = agent.stderr + state
    for secret in ("T0KEN-SECRET", "ACCESS-SECRET", "PW-SECRET", "GST-SECRET"):
        assert secret not in text, f"{secret} leaked"
    assert "token=***" in text and "user-pw=***" in agent.stderr + state
