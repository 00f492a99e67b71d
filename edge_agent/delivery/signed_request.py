"""Signed control requests: who may change a board (push begin/end/abort, rollback, list) or ask the
fleet who is there (discover, signed for the device "*": edge_agent.delivery.fleet_protocol).

A request is a JSON object: its parameters, and an `auth` object added by the signer:

  {"transfer_id": "push-…", "pipeline": "", …,
   "auth": {"key_id": "<16 hex>", "issued_at_ms": 1764097516767, "signature": "<base64>"}}

The Ed25519 signature (the same keys that sign bundles: a board verifies with `trusted_keys`)
covers the canonical encoding of

  {"action": "begin" | "end" | "abort" | "rollback" | "list" | "discover" | "group_begin",
   "device": the target's device id ("*" for discover and group_begin, whose params name the group
   and the devices), "id": the transfer or request id,
   "issued_at_ms": the signer's clock, "params": every field of the request except auth}

namely the bytes b"edge-agent-request/1\\n" followed by that object as JSON with sorted keys,
no whitespace, ASCII only (`\\uXXXX` escapes) and integers only (no floats, |n| <= 2^53).
A board rebuilds the encoding from what it parsed and acts on exactly those values, so the
signature covers what the board does, not a string it was handed. Binding the device and the
action means a request signed for one board or one action is useless on another; the issue
time (checked against `models.max_clock_skew_s`) and the ReplayGuard make a recorded request
useless later.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edge_agent.delivery.request_limits import ProtocolError, clip

if TYPE_CHECKING:  # the keys come loaded: a board without trusted keys never imports `cryptography`
    from edge_agent.delivery.keys import PrivateKey, PublicKey

REQUEST_FORMAT = b"edge-agent-request/1\n"
AUTH_FIELD = "auth"
ACTIONS = ("begin", "end", "abort", "rollback", "list", "discover", "group_begin")
MAX_SAFE_INTEGER = 2 ** 53
REMEMBERED_REQUESTS = 4096
_KEY_ID = re.compile(r"^[0-9a-f]{16}$")


class RequestAuthError(ProtocolError):
    """The request is unsigned, badly signed, outside the clock window or replayed."""


def canonical_json(value: Any) -> bytes:
    """The canonical encoding described in the module docstring; ProtocolError for values it cannot encode."""
    _check_canonical(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def _check_canonical(value: Any) -> None:
    if value is None or isinstance(value, (bool, str)):
        return
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise ProtocolError(f"the number {clip(value, 40)} is outside what a signed request may hold (|n| <= 2^53)")
        return
    if isinstance(value, list):
        for item in value:
            _check_canonical(item)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ProtocolError("object keys must be strings")
            _check_canonical(item)
        return
    raise ProtocolError(f"a signed request holds only strings, whole numbers, true/false, null, lists and objects; "
                        f"got a {type(value).__name__}")


def signed_bytes(action: str, device: str, request_id: str, issued_at_ms: int, params: dict[str, Any]) -> bytes:
    """What the signature covers."""
    body = {"action": action, "device": device, "id": request_id, "issued_at_ms": issued_at_ms, "params": params}
    return REQUEST_FORMAT + canonical_json(body)


_clock_lock = threading.Lock()
_last_issued_ms = 0


def issue_time_ms() -> int:
    """The signer's clock in ms, strictly increasing within this process (two requests signed in
    the same millisecond still differ, so a board never takes the second for a replay)."""
    global _last_issued_ms
    with _clock_lock:
        _last_issued_ms = max(int(time.time() * 1000), _last_issued_ms + 1)
        return _last_issued_ms


def sign_request(key: PrivateKey, action: str, device: str, request_id: str, params: dict[str, Any],
                 issued_at_ms: int | None = None) -> dict[str, Any]:
    """The request as sent: `params` with an `auth` object added."""
    if AUTH_FIELD in params:
        raise ValueError("params must not contain 'auth'")
    issued = issue_time_ms() if issued_at_ms is None else issued_at_ms
    signature = key.sign(signed_bytes(action, device, request_id, issued, params))
    return {**params, AUTH_FIELD: {"key_id": key.key_id, "issued_at_ms": issued,
                                   "signature": base64.b64encode(signature).decode("ascii")}}


@dataclass(frozen=True)
class Verified:
    """Who signed a request that passed every check, and when it was issued."""

    key: PublicKey
    issued_at_ms: int


def split_request(message: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(params, auth): auth is None for an unsigned request."""
    params = {k: v for k, v in message.items() if k != AUTH_FIELD}
    auth = message.get(AUTH_FIELD)
    return params, auth if auth is not None else None


def verify_request(message: dict[str, Any], action: str, device: str, request_id: str, keys: list[PublicKey],
                   now_ms: int, max_skew_s: float) -> Verified:
    """Check the signature, the clock window (skipped when max_skew_s is 0); RequestAuthError says why not.
    Replays are the ReplayGuard's business (the caller holds it)."""
    params, auth = split_request(message)
    if auth is None:
        raise RequestAuthError(f"the {action} request is not signed: this board takes only requests signed with a "
                               "trusted key (push, rollback and list with --key NAME.key; its .pub must be in the "
                               "board's trusted_keys)")
    if not isinstance(auth, dict):
        raise RequestAuthError(f"the {action} request's auth must be an object")
    key_id, issued, signature_text = auth.get("key_id"), auth.get("issued_at_ms"), auth.get("signature")
    if not isinstance(key_id, str) or not _KEY_ID.match(key_id):
        raise RequestAuthError(f"the {action} request's auth.key_id must be 16 lower-case hex digits")
    if not isinstance(issued, int) or isinstance(issued, bool) or not 0 <= issued <= MAX_SAFE_INTEGER:
        raise RequestAuthError(f"the {action} request's auth.issued_at_ms must be a whole number of ms since 1970")
    try:
        signature = base64.b64decode(signature_text, validate=True) if isinstance(signature_text, str) else b""
    except (binascii.Error, ValueError):
        signature = b""
    if len(signature) != 64:
        raise RequestAuthError(f"the {action} request's auth.signature must be a base64 Ed25519 signature (64 bytes)")
    data = signed_bytes(action, device, request_id, issued, params)
    by_id = [k for k in keys if k.key_id == key_id]
    signer = next((k for k in by_id + [k for k in keys if k not in by_id] if k.verifies(data, signature)), None)
    if signer is None:
        if by_id:
            raise RequestAuthError(f"the {action} request is signed by trusted key {key_id}, but the signature does not "
                                   "match this request: it was altered, or signed for another board or action")
        raise RequestAuthError(f"the {action} request is signed by key {key_id}, which is not trusted here (not one "
                               "of this board's trusted_keys): sign with a key whose .pub is in trusted_keys")
    if max_skew_s > 0:
        skew_s = (issued - now_ms) / 1000.0
        if abs(skew_s) > max_skew_s:
            direction = "ahead of" if skew_s > 0 else "behind"
            raise RequestAuthError(
                f"the {action} request was issued {abs(skew_s):.0f} s {direction} this board's clock (at most "
                f"{max_skew_s:g} s allowed, models.max_clock_skew_s): check the clocks of the board and the "
                "workstation (timedatectl; a board without a real-time clock needs NTP before it takes requests)")
    return Verified(signer, issued)


class ReplayGuard:
    """Requests already seen, so a recorded one cannot be played again.

    A request is known by (action, id, issued_at_ms): a pusher re-signs every resend, so a resent
    `end` is a new request, while the same message delivered twice (a QoS 1 duplicate, or an
    attacker replaying it) is not. An entry is forgotten once its issue time has left the clock
    window (the window refuses it by then); at most `capacity` entries are kept (the oldest go
    first), which matters only with the window turned off (max_clock_skew_s = 0)."""

    def __init__(self, window_s: float, capacity: int = REMEMBERED_REQUESTS):
        self.window_ms = int(window_s * 1000)
        self.capacity = capacity
        self._seen: OrderedDict[tuple[str, str, int], int] = OrderedDict()

    def first_time(self, action: str, request_id: str, issued_at_ms: int, now_ms: int) -> bool:
        """True (and remember it) when this request has not been seen; False for a replay."""
        key = (action, request_id, issued_at_ms)
        if key in self._seen:
            return False
        if self.window_ms:
            while self._seen and next(iter(self._seen.values())) < now_ms - self.window_ms:
                self._seen.popitem(last=False)
        while len(self._seen) >= self.capacity:
            self._seen.popitem(last=False)
        self._seen[key] = issued_at_ms
        return True

    def __len__(self) -> int:
        return len(self._seen)
