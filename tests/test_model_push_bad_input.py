"""Bad pushes against one real agent: each is refused with a reason that names the problem, leaves no
temporary file behind, and the running model keeps serving. The disk-full case runs its own agent
under RLIMIT_FSIZE (writes past the limit fail with EFBIG, as on a full disk)."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import subprocess
import sys

import pytest

from support import DEMO_MODEL, MODELS, REPO, AgentProcess, Collector, wait_until
from crafted_models import make_bundle, make_keys, random_bytes, rebundle, tamper_manifest
from edge_agent.delivery.update_protocol import PushBegin, chunk_count, push_topic
from push_support import agent_config, events, push, wait_serving

INT8_SHA = hashlib.sha256(DEMO_MODEL.read_bytes()).hexdigest()
DEVICE = "guard"


@pytest.fixture(scope="module")
def board(tmp_path_factory, session_broker):
    """One agent serving the signed int8 demo bundle: max_mb 0.1, transfers abandoned after 1.5 s idle."""
    folder = tmp_path_factory.mktemp("guard")
    keys = make_keys(folder, "dev", "other")
    v1 = make_bundle(folder / "v1.eab", DEMO_MODEL, keys["dev"], "1.0")
    config = agent_config(folder / "guard.toml", session_broker, DEVICE, v1, [folder / "dev.pub"],
                          models="max_mb = 0.1\ntransfer_timeout_s = 1.5")
    collector = Collector(session_broker, [f"edge/{DEVICE}/#"])
    agent = AgentProcess(["run", "--config", str(config)], folder)
    try:
        wait_serving(collector, DEVICE, INT8_SHA)
        yield {"folder": folder, "keys": keys, "v1": v1, "collector": collector, "agent": agent, "broker": session_broker,
               "incoming": folder / f"{DEVICE}-state" / "incoming"}
    finally:
        agent.kill()
        collector.stop()


def rejection(board, transfer_id: str) -> dict:
    collector = board["collector"]
    assert wait_until(lambda: any(e.get("transfer_id") == transfer_id and e["event"] == "rejected"
                                  for e in events(collector, DEVICE)), 15), events(collector, DEVICE)[-3:]
    return next(e for e in events(collector, DEVICE) if e.get("transfer_id") == transfer_id and e["event"] == "rejected")


def still_serving(board) -> None:
    wait_serving(board["collector"], DEVICE, INT8_SHA, count=3)
    assert not list(board["incoming"].glob("*")), "no temporary file is left behind"
    assert board["agent"].process.poll() is None


def send(board, transfer_id: str, part: str, payload: str | bytes) -> None:
    board["collector"].client.publish(push_topic("edge", DEVICE, transfer_id, part), payload, qos=1)


def begin(board, transfer_id: str, content: bytes, chunk_size: int = 64 * 1024, sha256: str = "") -> PushBegin:
    message = PushBegin(transfer_id, "", len(content), sha256 or hashlib.sha256(content).hexdigest(), chunk_size,
                        chunk_count(len(content), chunk_size))
    send(board, transfer_id, "begin", message.to_json())
    assert wait_until(lambda: any(e.get("transfer_id") == transfer_id for e in events(board["collector"], DEVICE)), 10)
    return message


def test_a_chunk_with_a_wrong_index_is_refused(board):
    content = board["v1"].read_bytes()
    begin(board, "bad-index", content)
    send(board, "bad-index", "chunk/5", content)
    assert "chunk 5 is out of range: transfer bad-index has 1 chunks" in rejection(board, "bad-index")["reason"]
    still_serving(board)


def test_a_chunk_with_a_wrong_size_is_refused(board):
    content = board["v1"].read_bytes()
    begin(board, "bad-size", content)
    send(board, "bad-size", "chunk/0", content[:1000])
    assert f"chunk 0 holds 1000 bytes; it must hold {len(content)}" in rejection(board, "bad-size")["reason"]
    still_serving(board)


def test_a_transfer_that_never_completes_times_out_and_is_cleaned_up(board):
    content = board["v1"].read_bytes()
    begin(board, "stalled", content, chunk_size=16 * 1024)
    send(board, "stalled", "chunk/0", content[:16 * 1024])
    assert wait_until(lambda: list(board["incoming"].glob("stalled.part")), 5), "the transfer started"
    assert "timed out: nothing arrived for 1.5 s" in rejection(board, "stalled")["reason"]
    still_serving(board)


def test_a_sha256_mismatch_is_refused(board):
    content = board["v1"].read_bytes()
    begin(board, "bad-hash", content, sha256=hashlib.sha256(b"something else").hexdigest())
    send(board, "bad-hash", "chunk/0", content)
    send(board, "bad-hash", "end", json.dumps({"transfer_id": "bad-hash"}))
    assert "the SHA-256 of the received bytes is" in rejection(board, "bad-hash")["reason"]
    still_serving(board)


def bad_signature(board, path):
    bundle = make_bundle(path, DEMO_MODEL, board["keys"]["dev"], "2.0")
    return tamper_manifest(bundle, b'"2.0"', b'"2.1"')


BAD_BUNDLES = {
    "bad signature": (bad_signature, "altered after signing"),
    "no signature": (lambda board, path: make_bundle(path, DEMO_MODEL, None, "2.0"), "is not signed"),
    "untrusted key": (lambda board, path: make_bundle(path, DEMO_MODEL, board["keys"]["other"], "2.0"),
                      "which is not trusted here"),
    "truncated tflite": (lambda board, path: rebundle(path, board["v1"], DEMO_MODEL.read_bytes()[:20000],
                                                      board["keys"]["dev"], "2.0"), "is not a valid TFLite model"),
    "random tflite": (lambda board, path: rebundle(path, board["v1"], random_bytes(4096), board["keys"]["dev"], "2.0"),
                      "is not a valid TFLite model"),
    "input not an image": (lambda board, path: make_bundle(path, MODELS / "sensor_tiny.tflite", board["keys"]["dev"],
                                                           "2.0", labels=None), "which is not an image"),
    "task detection": (lambda board, path: make_bundle(path, MODELS / "ssd_tiny.tflite", board["keys"]["dev"], "2.0",
                                                       labels=None),
                       "the model's task is detection, but pipeline cam publishes classification"),
    "larger than max_mb": (lambda board, path: make_bundle(path, REPO / "edge_agent/data/demo/digits_float32.tflite",
                                                           board["keys"]["dev"], "2.0"), "accepts at most 0.1 MB"),
    "not a bundle": (lambda board, path: path.write_bytes(random_bytes(4096)) and path, "not a model bundle"),
}


@pytest.mark.parametrize("case", list(BAD_BUNDLES))
def test_a_bad_bundle_is_refused_and_the_running_model_keeps_serving(board, case):
    make, expected = BAD_BUNDLES[case]
    bundle = make(board, board["folder"] / f"{case.replace(' ', '-')}.eab")
    (result,) = push(board["broker"], bundle, [DEVICE])
    assert result.result == "rejected", result
    assert expected in result.reason, result.reason
    still_serving(board)


@pytest.mark.parametrize("topic", ["begin", "end", "rollback"])
def test_a_payload_that_is_not_json_is_refused_with_the_reason(board, topic):
    collector = board["collector"]
    seen = len(events(collector, DEVICE))
    if topic == "end":
        begin(board, "garbled-end", board["v1"].read_bytes())
        seen = len(events(collector, DEVICE))
    if topic == "rollback":
        collector.client.publish(f"edge/{DEVICE}/models/rollback", b"\xff not json", qos=1)
    else:
        send(board, f"garbled-{topic}", topic, b"\xff not json")
    assert wait_until(lambda: len(events(collector, DEVICE)) > seen, 10)
    event = events(collector, DEVICE)[seen]
    assert event["event"] == "rejected" and f"the {topic} payload is not JSON" in event["reason"], event
    still_serving(board)


def test_a_disk_that_fills_up_during_the_transfer(tmp_path, session_broker, collect):
    keys = make_keys(tmp_path, "dev")
    v1 = make_bundle(tmp_path / "v1.eab", DEMO_MODEL, keys["dev"], "1.0")
    v2 = make_bundle(tmp_path / "v2.eab", REPO / "edge_agent/data/demo/digits_float32.tflite", keys["dev"], "2.0")
    config = agent_config(tmp_path / "full.toml", session_broker, "full", v1, [tmp_path / "dev.pub"], spool=False)
    collector = collect(session_broker, ["edge/full/#"])

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (96 * 1024, 96 * 1024))

    with open(tmp_path / "full.stderr", "wb") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "edge_agent", "run", "--config", str(config)], cwd=REPO,
                                   stdout=subprocess.DEVNULL, stderr=stderr, preexec_fn=limit_file_size)
    try:
        wait_serving(collector, "full", INT8_SHA)
        (result,) = push(session_broker, v2, ["full"], chunk_size=32 * 1024)
        assert result.result == "rejected", result
        assert "the file system refused to grow" in result.reason and "File too large" in result.reason
        wait_serving(collector, "full", INT8_SHA)
        assert not list((tmp_path / "full-state" / "incoming").glob("*")), "the partial file was removed"
    finally:
        process.kill()
        process.wait(10)
    assert os.path.getsize(tmp_path / "full.stderr") < 96 * 1024
