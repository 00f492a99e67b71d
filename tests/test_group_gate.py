"""The door of group pushes, attacked directly: what `RequestGate.admit_group` lets through of a begin or a chunk
on `{prefix}/fleet/group/G/push/...`, with real Ed25519 keys. The whole path with real agents is
tests/test_group_broadcast.py."""

from __future__ import annotations

import json

import pytest

from crafted_models import make_keys
from edge_agent.delivery.fleet_protocol import EVERY_DEVICE
from edge_agent.delivery.keys import load_public_key
from edge_agent.delivery.signed_request import sign_request
from edge_agent.delivery.update_protocol import GROUP_BEGIN, describe_bundle, group_begin_params, group_push_topic
from edge_agent.service.request_gate import OPEN, SIGNED, Refusal, RequestGate

GROUPS = ("lab", "kitchen")


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    private = make_keys(folder, "dev", "other")
    return {"dev": private["dev"], "other": private["other"], "trusted": [load_public_key(folder / "dev.pub")]}


def gate(keys, mode: str = SIGNED, begins: int = 12) -> RequestGate:
    return RequestGate("edge/board/models", "board", mode, keys["trusted"] if mode == SIGNED else [], 300, begins)


def begin_payload(key, transfer_id: str = "push-1", group: str = "lab", devices=("board", "other-board"),
                  action: str = GROUP_BEGIN, device: str = EVERY_DEVICE, **changes) -> bytes:
    params = {**group_begin_params(describe_bundle(transfer_id, b"x" * 1000, 256), group, list(devices)), **changes}
    return json.dumps(sign_request(key, action, device, transfer_id, params) if key else params).encode()


def admit(door: RequestGate, payload: bytes, group: str = "lab", transfer_id: str = "push-1"):
    return door.admit_group(group_push_topic("edge", group, transfer_id, "begin"), payload, "edge", GROUPS)


def test_a_signed_group_begin_naming_this_board_is_admitted_once(keys):
    door = gate(keys)
    payload = begin_payload(keys["dev"])
    request = admit(door, payload)
    assert (request.kind, request.transfer_id, request.group, request.signed_by) == \
        ("begin", "push-1", "lab", keys["dev"].key_id)
    assert request.devices == ("board", "other-board")
    assert "group" not in request.data and "devices" not in request.data and "auth" not in request.data
    with pytest.raises(Refusal) as replay:
        admit(door, payload)
    assert replay.value.silent


def test_group_begins_that_must_not_start_a_transfer(keys):
    door = gate(keys)
    cases = [
        (begin_payload(None), "lab", "is not signed", False),
        (begin_payload(keys["other"]), "lab", "not trusted here", False),
        # signed for one device's begin, or for another group's topic: the signature or the topic says no
        (begin_payload(keys["dev"], action="begin", device="board"), "lab", "does not match", False),
        (begin_payload(keys["dev"], group="kitchen"), "lab", "does not match the topic's 'lab'", True),
        (begin_payload(keys["dev"], devices=("someone-else",)), "lab", "does not name this device", True),
        (begin_payload(keys["dev"], devices=()), "lab", "devices must be a list of 1 to", True),
        (begin_payload(keys["dev"], devices=("a/b",)), "lab", "devices must be a list of 1 to", True),
        (begin_payload(keys["dev"], size=2000), "lab", "make 8 chunks, not 4", True),
        (b"not json", "lab", "not JSON", True),
    ]
    for payload, group, reason, silent in cases:
        with pytest.raises(Refusal, match=reason) as refusal:
            admit(door, payload, group)
        assert refusal.value.silent == silent, reason


def test_a_group_the_board_is_not_in_and_chunks(keys):
    door = gate(keys)
    with pytest.raises(Refusal, match="not a group push topic of this board's groups") as refusal:
        admit(door, begin_payload(keys["dev"], group="garage"), "garage")
    assert refusal.value.silent, "other groups' pushes are none of this board's business"
    chunk = door.admit_group(group_push_topic("edge", "kitchen", "push-2", "chunk/7"), b"raw", "edge", GROUPS)
    assert (chunk.kind, chunk.transfer_id, chunk.index, chunk.group, chunk.payload) == \
        ("chunk", "push-2", 7, "kitchen", b"raw")
    for part in ("end", "abort", "chunk/x"):  # only begin and chunks travel on a group's topic
        with pytest.raises(Refusal):
            door.admit_group(group_push_topic("edge", "lab", "push-2", part), b"{}", "edge", GROUPS)


def test_group_begins_count_against_the_begin_rate_in_open_mode(keys):
    door = gate(keys, OPEN, begins=2)
    assert admit(door, begin_payload(None)).signed_by == ""
    admit(door, begin_payload(None))
    with pytest.raises(Refusal, match="more than 2 push begins"):
        admit(door, begin_payload(None))
