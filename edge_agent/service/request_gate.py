"""The door of the model-update topics: which messages from the broker a board may act on.

Every message under `{prefix}/{device}/models/` passes `RequestGate.admit` before anything
else looks at it; what comes out is a `Request` whose JSON was parsed within the bounds of
edge_agent.delivery.request_limits and, on a board with trusted keys, whose signature, issue
time and freshness were checked (edge_agent.delivery.signed_request). Anything else raises
`Refusal`, which says why, in words already clipped.

Modes, from the config:
  signed   trusted_keys is set: every JSON request (begin, end, abort, rollback, list) must be
           signed by one of them, for this device, within models.max_clock_skew_s, never seen before;
  open     no trusted_keys and allow_unsigned_models = true set explicitly: unsigned requests are
           taken from anyone who can publish on the broker (the README says plainly what that allows);
  closed   no trusted_keys otherwise: nobody can be authenticated, so every request is refused.
A discover request (`{prefix}/fleet/discover`, edge_agent.delivery.fleet_protocol) passes
`admit_discover`: the same modes, signed for the device "*". Every refusal of one is silent: a fleet answering a broadcast it refuses would flood the broker for whoever sent it.
A group push (`{prefix}/fleet/group/G/push/...`, one of the board's own groups) passes
`admit_group`: its begin signed once for the device "*" with the action group_begin, the same
modes, clock window, replay guard and begin rate; its chunks like any other.
Chunks are raw bytes and carry no signature: they are bound to their transfer by the chunk
hashes of its (signed) begin, which the transfer checks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edge_agent.errors import EdgeAgentError
from edge_agent.delivery.request_limits import DEFAULT_JSON_BYTES, ProtocolError, RateWindow, parse_json_object
from edge_agent.delivery.signed_request import ReplayGuard, RequestAuthError, split_request, verify_request
from edge_agent.delivery.fleet_protocol import DISCOVER, EVERY_DEVICE, MAX_DISCOVER_BYTES, parse_discover
from edge_agent.delivery.update_protocol import (
    GROUP_BEGIN,
    MAX_BEGIN_BYTES,
    is_valid_id,
    parse_group_begin,
    parse_group_topic,
    parse_models_topic,
)

if TYPE_CHECKING:  # keys come loaded: a board without trusted keys never imports `cryptography`
    from edge_agent.delivery.keys import PublicKey

SIGNED, OPEN, CLOSED = "signed", "open", "closed"


@dataclass(frozen=True)
class Request:
    """A message the board may act on."""

    kind: str  # begin, chunk, end, abort, rollback, list, discover
    transfer_id: str = ""  # push requests
    request_id: str = ""  # rollback, list
    index: int = -1  # chunk
    data: dict[str, Any] = field(default_factory=dict)  # the JSON request without its auth
    signed_by: str = ""  # the trusted key's id; "" for an unsigned request (open mode) or a chunk
    payload: bytes = b""  # a chunk's bytes
    group: str = ""  # a group push's begin or chunk: the group whose topic carried it
    devices: tuple[str, ...] = ()  # a group begin: the boards it names

    @property
    def id(self) -> str:
        return self.transfer_id or self.request_id


class Refusal(EdgeAgentError):
    """A message the board does not act on. `kind` groups refusals for rate-limited logging; `claimed_id`
    is the id the message claimed (shown, never trusted); `silent` ones get no answer (replays,
    duplicates: the original was answered)."""

    def __init__(self, reason: str, kind: str, claimed_id: str = "", silent: bool = False):
        super().__init__(reason)
        self.reason, self.kind, self.claimed_id, self.silent = reason, kind, claimed_id, silent


def gate_mode(trusted_keys: tuple[str, ...], allow_unsigned_pushes: bool) -> str:
    if trusted_keys:
        return SIGNED
    return OPEN if allow_unsigned_pushes else CLOSED


class RequestGate:
    """Admits or refuses the messages of one board (used from one thread: the model-update worker)."""

    def __init__(self, base: str, device_id: str, mode: str, keys: list[PublicKey], max_clock_skew_s: float,
                 max_begins_per_minute: int):
        self.base = base
        self.device_id = device_id
        self.mode = mode
        self.keys = keys
        self.max_clock_skew_s = max_clock_skew_s
        self.replays = ReplayGuard(max_clock_skew_s)
        self.begins = RateWindow(max_begins_per_minute)

    def admit_discover(self, payload: bytes, now_ms: int | None = None) -> Request:
        """A discover request the board may answer; Refusal (always silent) otherwise. How many are
        answered is service.fleet_answers' business: it counts only those admitted here, so on a board in
        signed mode a flood of unsigned or replayed ones cannot use up the answers its owner's tools need."""
        try:
            message = parse_json_object(payload, DISCOVER, MAX_DISCOVER_BYTES)
            data, _ = split_request(message)
            request = parse_discover(data)
        except ProtocolError as err:
            raise Refusal(str(err), "discover-malformed", silent=True) from None
        request_id = request.request_id
        if self.mode == CLOSED:
            raise Refusal("a discover request: this board has no trusted_keys, so it cannot tell who asks and "
                          "answers nobody (add the workstation's .pub to trusted_keys)", "closed", request_id,
                          silent=True)
        signed_by = ""
        if self.mode == SIGNED:
            now = int(time.time() * 1000) if now_ms is None else now_ms
            try:
                verified = verify_request(message, DISCOVER, EVERY_DEVICE, request_id, self.keys, now,
                                          self.max_clock_skew_s)
            except RequestAuthError as err:
                raise Refusal(str(err), "discover-unauthenticated", request_id, silent=True) from None
            except ProtocolError as err:
                raise Refusal(f"discover: {err}", "discover-malformed", request_id, silent=True) from None
            if not self.replays.first_time(DISCOVER, request_id, verified.issued_at_ms, now):
                raise Refusal(f"the discover request {request_id} was seen before (a replay or a duplicate "
                              "delivery)", "replay", request_id, silent=True)
            signed_by = verified.key.key_id
        return Request(DISCOVER, request_id=request_id, data=request.to_params(), signed_by=signed_by)

    def admit_group(self, topic: str, payload: bytes, prefix: str, groups: tuple[str, ...],
                    now_ms: int | None = None) -> Request:
        """A group push's begin or chunk. A begin comes out as a "begin" Request with `group` and
        `devices` set; one that does not name this board is refused silently."""
        try:
            group, where = parse_group_topic(topic, prefix, groups)
        except ProtocolError as err:
            raise Refusal(str(err), "group-topic", silent=True) from None
        if where.kind == "chunk":
            return Request("chunk", where.transfer_id, index=where.index, payload=payload, group=group)
        transfer_id = where.transfer_id
        try:
            message = parse_json_object(payload, "group begin", MAX_BEGIN_BYTES)
            data, _ = split_request(message)
            parsed = parse_group_begin(data, transfer_id, group)
        except ProtocolError as err:
            raise Refusal(str(err), "begin-malformed", transfer_id, silent=True) from None
        # a refusal is answered only by the boards the begin names (rate-limited by the caller): one
        # forged broadcast must not make a whole group publish
        if self.device_id not in parsed.devices:
            raise Refusal(f"group begin {transfer_id} does not name this device", "group-not-named", transfer_id,
                          silent=True)
        if not self.begins.allow():
            raise Refusal(f"more than {self.begins.limit} push begins in the last minute "
                          "(models.max_begins_per_minute): try again in a minute", "begin-rate", transfer_id)
        signed_by = ""
        if self.mode == CLOSED:
            raise Refusal("a group push: this board has no trusted_keys, so it cannot tell who sent it and takes "
                          "none (add the workstation's .pub to trusted_keys)", "closed", transfer_id)
        if self.mode == SIGNED:
            now = int(time.time() * 1000) if now_ms is None else now_ms
            try:
                verified = verify_request(message, GROUP_BEGIN, EVERY_DEVICE, transfer_id, self.keys, now,
                                          self.max_clock_skew_s)
            except RequestAuthError as err:
                raise Refusal(str(err), "begin-unauthenticated", transfer_id) from None
            except ProtocolError as err:
                raise Refusal(f"group begin: {err}", "begin-malformed", transfer_id) from None
            if not self.replays.first_time(GROUP_BEGIN, transfer_id, verified.issued_at_ms, now):
                raise Refusal(f"the group begin {transfer_id} was seen before (a replay or a duplicate delivery)",
                              "replay", transfer_id, silent=True)
            signed_by = verified.key.key_id
        return Request("begin", transfer_id, data=parsed.push.to_params(), signed_by=signed_by, group=group,
                       devices=parsed.devices)

    def admit(self, topic: str, payload: bytes, now_ms: int | None = None) -> Request:
        try:
            where = parse_models_topic(topic, self.base)
        except ProtocolError as err:
            raise Refusal(str(err), "topic") from None
        if where.kind == "chunk":
            return Request("chunk", where.transfer_id, index=where.index, payload=payload)
        if where.kind == "begin" and not self.begins.allow():
            raise Refusal(f"more than {self.begins.limit} push begins in the last minute "
                          "(models.max_begins_per_minute): try again in a minute", "begin-rate", where.transfer_id)
        limit = MAX_BEGIN_BYTES if where.kind == "begin" else DEFAULT_JSON_BYTES
        try:
            message = parse_json_object(payload, where.kind, limit)
        except ProtocolError as err:
            raise Refusal(str(err), f"{where.kind}-malformed", where.transfer_id) from None
        if where.transfer_id:
            request_id = where.transfer_id
            if message.get("transfer_id") != request_id and where.kind != "begin":
                raise Refusal(f"{where.kind}: transfer_id must be the topic's {request_id!r}",
                              f"{where.kind}-malformed", request_id)
        else:
            request_id = message.get("request_id")
            if not is_valid_id(request_id):
                raise Refusal(f"{where.kind}: request_id must be 1-64 letters, digits, '.', '_' or '-'",
                              f"{where.kind}-malformed")
        data, _ = split_request(message)
        signed_by = ""
        if self.mode == CLOSED:
            raise Refusal("this board has no trusted_keys, so it cannot tell who sent a request and takes none: add "
                          "the workstation's signing key (.pub) to trusted_keys and push with --key (or, only on a "
                          "closed network, set allow_unsigned_models = true)", "closed", request_id)
        if self.mode == SIGNED:
            now = int(time.time() * 1000) if now_ms is None else now_ms
            try:
                verified = verify_request(message, where.kind, self.device_id, request_id, self.keys, now,
                                          self.max_clock_skew_s)
            except RequestAuthError as err:
                raise Refusal(str(err), f"{where.kind}-unauthenticated", request_id) from None
            except ProtocolError as err:  # a value the canonical encoding cannot hold (a float, a huge number)
                raise Refusal(f"{where.kind}: {err}", f"{where.kind}-malformed", request_id) from None
            if not self.replays.first_time(where.kind, request_id, verified.issued_at_ms, now):
                raise Refusal(f"the {where.kind} request {request_id} was seen before (a replay or a duplicate "
                              "delivery)", "replay", request_id, silent=True)
            signed_by = verified.key.key_id
        if where.transfer_id:
            return Request(where.kind, transfer_id=request_id, data=data, signed_by=signed_by)
        return Request(where.kind, request_id=request_id, data=data, signed_by=signed_by)
