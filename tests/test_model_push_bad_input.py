"""Bad pushes against one real agent: each is refused with a reason that names the problem, leaves no
temporary file behind, and the running model keeps serving. The disk-full case runs its own agent
under RLIMIT_FSIZE (writes past the limit fail with EFBIG, as on a full disk)."""

from __future__ import annotations

import dataclasses
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
from edge_agent.delivery.update_protocol import PushBegin, push_topic
from edge_agent.delivery.update_protocol import describe_bundle as describe
from push_support import agent_config, events, push, send_begin, send_end, signed_payload, wait_serving

INT8_SHA = hashlib.sha256(DEMO_MODEL.read_bytes()).hexdigest()
DEVICE = "guard"


@pytest.fixture(scope="module")
def board(tmp_path_factory, session_broker):
    """One agent serving the signed int8 demo bundle: max_mb 0.1, transfers abandoned after 1.5 s idle."""
    folder = tmp_path_factory.mktemp("guard")
    keys = make_keys(folder, "dev", "other")
    v1 = make_bundle(folder / "v1.eab", DEMO_MODEL, keys["dev"], "1.0")
    config = agent_config(folder / "guard.toml", session_broker, DEVICE, v1, [folder / "dev.pub"],
                          models="max_mb = 0.1\ntransfer_timeout_s = 1.5\nmax_begins_per_minute = 600")
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
    """A begin signed with the trusted key, as the pusher sends it (`sha256` overrides the whole file's hash)."""
    key = board["keys"]["dev"]
    if sha256:
        message = dataclasses.replace(describe(transfer_id, content, chunk_size), sha256=sha256)
        send(board, transfer_id, "begin", signed_payload(key, "begin", DEVICE, transfer_id, message.to_params()))
    else:
        message = send_begin(board["collector"].client, key, DEVICE, transfer_id, content, chunk_size)
    assert wait_until(lambda: any(e.get("transfer_id") == transfer_id for e in events(board["collector"], DEVICE)), 10)
    return message


def end(board, transfer_id: str) -> None:
    send_end(board["collector"].client, board["keys"]["dev"], DEVICE, transfer_id)


def answers(board, transfer_id: str) -> list[str]:
    return [e["event"] for e in events(board["collector"], DEVICE) if e.get("transfer_id") == transfer_id]


def test_chunks_with_a_wrong_index_size_or_content_are_dropped_and_the_transfer_goes_on(board):
    """Anyone on the broker can publish under a transfer's topics: a chunk that is not one the signed
    begin listed (index out of range, wrong size, other bytes) is dropped, and the real pusher's
    transfer completes. (Before, one stray chunk failed someone else's transfer.)"""
    content = make_bundle(board["folder"] / "v1.0.1.eab", DEMO_MODEL, board["keys"]["dev"], "1.0.1").read_bytes()
    begin(board, "strays", content)
    send(board, "strays", "chunk/5", content)
    send(board, "strays", "chunk/0", content[:1000])
    send(board, "strays", "chunk/0", bytes(len(content)))
    end(board, "strays")
    assert wait_until(lambda: "missing" in answers(board, "strays"), 10), answers(board, "strays")
    missing = next(e for e in events(board["collector"], DEVICE) if e.get("transfer_id") == "strays"
                   and e["event"] == "missing")
    assert missing["missing"] == [0], "none of the stray chunks was taken for chunk 0"
    send(board, "strays", "chunk/0", content)
    end(board, "strays")
    assert wait_until(lambda: "activated" in answers(board, "strays"), 30), answers(board, "strays")
    assert "rejected" not in answers(board, "strays")
    assert "dropped a chunk that is not the transfer's" in board["agent"].stderr
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
    end(board, "bad-hash")
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
    (result,) = push(board["broker"], bundle, [DEVICE], key=board["keys"]["dev"])
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
    assert "transfer_id" not in event, "a garbled request cannot end (or answer for) the transfer it names"
    if topic == "end":  # the transfer went on: only its own timeout ends it
        assert "timed out" in rejection(board, "garbled-end")["reason"]
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
        (result,) = push(session_broker, v2, ["full"], key=keys["dev"], chunk_size=32 * 1024)
        assert result.result == "rejected", result
        assert "the file system refused to grow" in result.reason and "File too large" in result.reason
        wait_serving(collector, "full", INT8_SHA)
        assert not list((tmp_path / "full-state" / "incoming").glob("*")), "the partial file was removed"
    finally:
        process.kill()
        process.wait(10)
    assert os.path.getsize(tmp_path / "full.stderr") < 96 * 1024
