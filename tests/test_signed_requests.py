"""Signed control requests and the bounds on untrusted input, without a broker: the canonical encoding,
signatures bound to device, action and id, the clock window, replays, the request gate's modes, the
bounded JSON parser, clipping, the log limiter, and version comparison."""

from __future__ import annotations

import json
import logging
import time

import pytest

from crafted_models import make_keys
from edge_agent.delivery.keys import load_public_key
from edge_agent.delivery.request_limits import LogLimiter, ProtocolError, RateWindow, clip, parse_json_object
from edge_agent.delivery.signed_request import (
    ReplayGuard,
    RequestAuthError,
    canonical_json,
    sign_request,
    signed_bytes,
    verify_request,
)
from edge_agent.delivery.update_protocol import describe_bundle, parse_begin, parse_models_topic
from edge_agent.delivery.versions import compare_versions, downgrade_problem
from edge_agent.service.request_gate import CLOSED, OPEN, SIGNED, Refusal, RequestGate

BASE = "edge/board/models"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    private = make_keys(folder, "dev", "other")
    return {"dev": private["dev"], "other": private["other"], "trusted": [load_public_key(folder / "dev.pub")]}


def now_ms() -> int:
    return int(time.time() * 1000)


def test_the_canonical_encoding_is_stable_ascii_and_refuses_what_it_cannot_encode():
    one = canonical_json({"b": [1, "é", None, True], "a": {"z": 0, "y": "x"}})
    two = canonical_json({"a": {"y": "x", "z": 0}, "b": [1, "é", None, True]})
    assert one == two == b'{"a":{"y":"x","z":0},"b":[1,"\\u00e9",null,true]}'
    with pytest.raises(ProtocolError, match="whole numbers"):
        canonical_json({"x": 1.5})
    with pytest.raises(ProtocolError, match="outside what a signed request may hold"):
        canonical_json({"x": 2 ** 60})
    data = signed_bytes("rollback", "board", "r-1", 1700000000000, {"request_id": "r-1", "pipeline": ""})
    assert data.startswith(b"edge-agent-request/1\n") and b'"device":"board"' in data


def test_a_signature_binds_the_device_the_action_the_id_and_every_parameter(keys):
    message = sign_request(keys["dev"], "rollback", "board", "r-1", {"request_id": "r-1", "pipeline": "cam"})
    assert verify_request(message, "rollback", "board", "r-1", keys["trusted"], now_ms(), 300).key.key_id == \
        keys["dev"].key_id
    for action, device, request_id, change in [
        ("rollback", "other-board", "r-1", {}),  # signed for another board
        ("list", "board", "r-1", {}),  # another action
        ("rollback", "board", "r-2", {}),  # another id
        ("rollback", "board", "r-1", {"pipeline": "other"}),  # a parameter changed
        ("rollback", "board", "r-1", {"extra": 1}),  # a parameter added
    ]:
        with pytest.raises(RequestAuthError, match="does not match this request"):
            verify_request({**message, **change}, action, device, request_id, keys["trusted"], now_ms(), 300)
    forged = sign_request(keys["other"], "rollback", "board", "r-1", {"request_id": "r-1", "pipeline": "cam"})
    with pytest.raises(RequestAuthError, match="which is not trusted here"):
        verify_request(forged, "rollback", "board", "r-1", keys["trusted"], now_ms(), 300)
    with pytest.raises(RequestAuthError, match="is not signed"):
        verify_request({"request_id": "r-1"}, "rollback", "board", "r-1", keys["trusted"], now_ms(), 300)
    for auth in ("x", {"key_id": "zz"}, {**message["auth"], "signature": "AAAA"}, {**message["auth"], "issued_at_ms": -1}):
        with pytest.raises(RequestAuthError):
            verify_request({**message, "auth": auth}, "rollback", "board", "r-1", keys["trusted"], now_ms(), 300)


def test_the_clock_window_refuses_old_and_future_requests_and_can_be_turned_off(keys):
    old = sign_request(keys["dev"], "list", "board", "l-1", {"request_id": "l-1"}, issued_at_ms=now_ms() - 600_000)
    with pytest.raises(RequestAuthError, match=r"issued 600 s behind this board's clock .*max_clock_skew_s.*NTP"):
        verify_request(old, "list", "board", "l-1", keys["trusted"], now_ms(), 300)
    future = sign_request(keys["dev"], "list", "board", "l-1", {"request_id": "l-1"}, issued_at_ms=now_ms() + 400_000)
    with pytest.raises(RequestAuthError, match="ahead of"):
        verify_request(future, "list", "board", "l-1", keys["trusted"], now_ms(), 300)
    assert verify_request(old, "list", "board", "l-1", keys["trusted"], now_ms(), 0)  # 0: no clock check


def test_the_replay_guard_remembers_each_request_once_and_stays_bounded():
    guard = ReplayGuard(window_s=300, capacity=100)
    start = now_ms()
    assert guard.first_time("end", "t-1", start, start)
    assert not guard.first_time("end", "t-1", start, start), "the same message again is a replay"
    assert guard.first_time("end", "t-1", start + 1, start), "a resend is signed afresh: a new request"
    for n in range(1000):
        guard.first_time("rollback", f"r-{n}", start + n, start + n)
    assert len(guard) <= 100
    later = start + 400_000  # entries older than the window are forgotten (the window refuses them anyway)
    guard.first_time("list", "l", later, later)
    assert len(guard) < 100


def test_the_json_parser_bounds_size_depth_numbers_and_duplicates():
    assert parse_json_object(b'{"a": [1, {"b": 2}]}', "rollback") == {"a": [1, {"b": 2}]}
    cases = [
        (b"x" * 70_000, "is 70,000 bytes; at most 65,536"),
        (b'{"a": ' + b"[" * 50 + b"]" * 50 + b"}", "nested too deeply"),
        (b"[" * 60_000, "nested too deeply"),
        (b'{"n": ' + b"9" * 5000 + b"}", "holds a number of 5,000 digits"),
        (b'{"n": NaN}', "holds NaN"),
        (b'{"a": 1, "a": 2}', "repeats a key"),
        (b"\xff", "not JSON (not UTF-8)"),
        (b'"text"', "must be a JSON object, got str"),
    ]
    for payload, message in cases:
        with pytest.raises(ProtocolError, match=message.replace("(", r"\(").replace(")", r"\)")):
            parse_json_object(payload, "rollback")


def test_echoed_text_is_escaped_and_clipped():
    assert clip("plain") == "plain"
    assert clip("two\nlines\x1b[31m") == "two\\nlines\\x1b[31m", "a newline cannot forge a log line"
    long = clip("x" * 5_000_000)
    assert len(long) <= 160 and long.endswith("(5,000,000 characters)")
    assert clip("\u202eevil") == "\\u202eevil"


def test_the_log_limiter_says_one_line_per_kind_per_interval_with_a_count(caplog):
    limiter = LogLimiter(logging.getLogger("test.limits"), interval_s=0.2)
    with caplog.at_level(logging.WARNING, "test.limits"):
        for _ in range(50):
            limiter.log(logging.WARNING, "flood", "refused %s", "x")
        limiter.log(logging.WARNING, "other", "another kind")
        time.sleep(0.25)
        limiter.log(logging.WARNING, "flood", "refused %s", "y")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["refused x", "another kind", "refused y (and 49 more like it in the last 0 s, not logged)"]


def test_a_rate_window_counts_a_sliding_minute():
    window = RateWindow(3, window_s=60)
    assert [window.allow(t) for t in (0, 1, 2, 3)] == [True, True, True, False]
    assert window.allow(60.5) and not window.allow(60.6)


def test_chunk_indexes_must_be_ascii_digits():
    assert parse_models_topic(f"{BASE}/push/t-1/chunk/7", BASE).index == 7
    for index in ("١", "²", "-1", "1e3", " 1", "0x1", "9" * 12):
        with pytest.raises(ProtocolError, match="is not a whole number written in ASCII digits"):
            parse_models_topic(f"{BASE}/push/t-1/chunk/{index}", BASE)
    assert parse_models_topic(f"{BASE}/list", BASE).kind == "list"


def test_a_begin_lists_each_chunks_hash_and_old_pushers_are_told_to_upgrade():
    content = bytes(range(256)) * 40
    begin = describe_bundle("t1", content, 1024, allow_downgrade=True, abort_token="secret")
    assert parse_begin(begin.to_json().encode(), "t1") == begin
    assert len(begin.chunk_digests()) == begin.chunks == 10 and begin.allow_downgrade
    data = begin.to_params()
    for change, message in [({"chunk_hashes": None}, "chunk_hashes is missing: the pusher's edge-agent is older"),
                            ({"chunk_hashes": "AAAA"}, "must be the base64 of 10 SHA-256 digests"),
                            ({"allow_downgrade": "yes"}, "allow_downgrade must be true or false"),
                            ({"chunk_size": 256, "chunks": 160, "size": 40960}, "must be the base64 of 160")]:
        with pytest.raises(ProtocolError, match=message):
            parse_begin(json.dumps({**data, **change}).encode(), "t1")


def gate(mode: str, keys, **options) -> RequestGate:
    return RequestGate(BASE, "board", mode, keys["trusted"] if mode == SIGNED else [], options.get("skew", 300),
                       options.get("begins", 12))


def test_the_gate_admits_only_signed_fresh_requests_on_a_board_with_keys(keys):
    signed = gate(SIGNED, keys)
    message = sign_request(keys["dev"], "rollback", "board", "r-1", {"request_id": "r-1", "pipeline": ""})
    request = signed.admit(f"{BASE}/rollback", json.dumps(message).encode())
    assert (request.kind, request.request_id, request.signed_by) == ("rollback", "r-1", keys["dev"].key_id)
    assert "auth" not in request.data
    with pytest.raises(Refusal) as replay:
        signed.admit(f"{BASE}/rollback", json.dumps(message).encode())
    assert replay.value.silent, "a replay (or a QoS 1 duplicate) is dropped without an answer"
    with pytest.raises(Refusal, match="is not signed") as unsigned:
        signed.admit(f"{BASE}/rollback", b'{"request_id": "r-2"}')
    assert unsigned.value.claimed_id == "r-2" and not unsigned.value.silent
    chunk = signed.admit(f"{BASE}/push/t-1/chunk/3", b"raw bytes")
    assert (chunk.kind, chunk.index, chunk.payload) == ("chunk", 3, b"raw bytes")
    with pytest.raises(Refusal, match="end: transfer_id must be the topic's"):
        signed.admit(f"{BASE}/push/t-1/end", b'{"transfer_id": "t-2"}')


def test_the_gate_in_open_and_closed_mode_and_its_begin_rate(keys):
    opened = gate(OPEN, keys)
    assert opened.admit(f"{BASE}/rollback", b'{"request_id": "r-1"}').signed_by == ""
    with pytest.raises(Refusal, match="has no trusted_keys, so it cannot tell who sent a request"):
        gate(CLOSED, keys).admit(f"{BASE}/rollback", b'{"request_id": "r-1"}')
    limited = gate(OPEN, keys, begins=3)
    begin = describe_bundle("t1", b"x" * 1000, 256).to_json().encode()
    for _ in range(3):
        limited.admit(f"{BASE}/push/t1/begin", begin)
    with pytest.raises(Refusal, match="more than 3 push begins in the last minute"):
        limited.admit(f"{BASE}/push/t1/begin", begin)


def test_versions_compare_as_versions():
    assert compare_versions("1.10", "1.9") == 1 and compare_versions("1.0", "1.0.0") == 0
    assert compare_versions("0.1-old", "2.0") == -1 and compare_versions("v2.1", "2.0.9") == 1
    assert compare_versions("1.0-rc1", "1.0") == -1 and compare_versions("1.0-rc2", "1.0-rc10") == -1
    assert compare_versions("2025.11.25", "2025.2.1") == 1
    assert compare_versions("unversioned", "2.0") is None and compare_versions("same", "same") == 0
    assert "older than the active version 2.0" in downgrade_problem("2.0", "0.1-old")
    assert "cannot be compared" in downgrade_problem("2.0", "unversioned")
    assert downgrade_problem("2.0", "2.0") is None and downgrade_problem("2.0", "2.1") is None
    assert downgrade_problem("", "0.1") is None and downgrade_problem("unversioned", "0.1") is None
