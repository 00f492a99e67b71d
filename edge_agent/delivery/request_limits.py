"""Bounds on what a request from the broker may cost a board before (and after) it is trusted.

Anyone who can publish on the broker can send a board anything, so every request is parsed
under hard limits and nothing from it reaches a log line or an event unbounded:

  - JSON: a size cap per payload, at most MAX_JSON_CONTAINERS brackets (counted before parsing,
    so the parser's recursion stays shallow), nesting at most MAX_JSON_DEPTH deep, numbers of at most
    MAX_NUMBER_DIGITS characters (Python would otherwise spend time on, or refuse with an
    unrelated error, an integer of thousands of digits), no NaN or Infinity, no duplicate keys;
  - text echoed back (`clip`): non-printable characters escaped, at most MAX_ECHO_CHARS long;
  - log lines of one kind (`LogLimiter`): one per LOG_INTERVAL_S, the next one says how many
    were held back;
  - events per kind of request (`RateWindow`): a sliding one-minute window.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from typing import Any

from edge_agent.errors import InputError

MAX_JSON_DEPTH = 6
MAX_JSON_CONTAINERS = 256  # '[' and '{' in a payload: bounds the parser's recursion whatever the recursion limit
MAX_NUMBER_DIGITS = 20  # a signed 64-bit integer has at most 19 digits and a sign
MAX_ECHO_CHARS = 160
LOG_INTERVAL_S = 60.0
DEFAULT_JSON_BYTES = 64 * 1024


class ProtocolError(InputError, ValueError):
    """A request does not follow the protocol; the message says what was wrong (already clipped)."""


def clip(value: Any, limit: int = MAX_ECHO_CHARS) -> str:
    """`value` as text safe to log or echo: control and non-ASCII-printable characters escaped
    (so a newline cannot forge a log line), and at most `limit` characters long."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) > 4 * limit:  # escaping only needs what can still be shown
        text = text[: 4 * limit]
        cut = True
    else:
        cut = False
    escaped = "".join(c if c.isprintable() and c != "\\" else c.encode("unicode_escape").decode("ascii")
                      for c in text)
    if len(escaped) > limit or cut:
        total = len(value) if isinstance(value, str) else None
        more = f"… ({total:,} characters)" if total is not None else "…"
        return escaped[: max(0, limit - len(more))] + more
    return escaped


def clip_repr(value: Any, limit: int = MAX_ECHO_CHARS) -> str:
    """Like repr(value) for messages ('got …'), clipped: a string shows in quotes."""
    if isinstance(value, str):
        return "'" + clip(value, limit - 2) + "'"
    if isinstance(value, (dict, list)):
        return f"a JSON {'object' if isinstance(value, dict) else 'list'} of {len(value)} item(s)"
    return clip(value, limit)


def parse_json_object(payload: bytes, what: str, max_bytes: int = DEFAULT_JSON_BYTES) -> dict[str, Any]:
    """The payload as a JSON object within the limits above; ProtocolError naming `what` otherwise."""
    if len(payload) > max_bytes:
        raise ProtocolError(f"the {what} payload is {len(payload):,} bytes; at most {max_bytes:,} are accepted")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(f"the {what} payload is not JSON (not UTF-8): send a JSON object") from None
    containers = payload.count(b"[") + payload.count(b"{")
    if containers > MAX_JSON_CONTAINERS:
        raise ProtocolError(f"the {what} payload is nested too deeply or holds too many lists and objects "
                            f"({containers:,} brackets; at most {MAX_JSON_DEPTH} levels and {MAX_JSON_CONTAINERS} brackets)")
    try:
        value = json.loads(text, parse_int=_bounded_int, parse_float=_bounded_float,
                           parse_constant=_no_constant, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as err:
        raise ProtocolError(f"the {what} payload is not JSON ({err.msg} at character {err.pos}): "
                            "send a JSON object") from None
    except RecursionError:
        raise ProtocolError(f"the {what} payload is nested too deeply (at most {MAX_JSON_DEPTH} levels)") from None
    except ProtocolError as err:
        raise ProtocolError(f"the {what} payload {err}") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"the {what} payload must be a JSON object, got {type(value).__name__}")
    if _depth(value) > MAX_JSON_DEPTH:
        raise ProtocolError(f"the {what} payload is nested too deeply (at most {MAX_JSON_DEPTH} levels)")
    return value


def _bounded_int(text: str) -> int:
    if len(text) > MAX_NUMBER_DIGITS:
        raise ProtocolError(f"holds a number of {len(text):,} digits (at most {MAX_NUMBER_DIGITS})")
    return int(text)


def _bounded_float(text: str) -> float:
    if len(text) > 2 * MAX_NUMBER_DIGITS:
        raise ProtocolError(f"holds a number of {len(text):,} characters (at most {2 * MAX_NUMBER_DIGITS})")
    return float(text)


def _no_constant(text: str) -> Any:
    raise ProtocolError(f"holds {text}, which is not a JSON number")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ProtocolError("repeats a key (each key may appear once)")
    return result


def _depth(value: Any, level: int = 1) -> int:
    """How deeply `value` nests (1 for a flat object); stops counting past the limit."""
    if level > MAX_JSON_DEPTH:
        return level
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return max((_depth(child, level + 1) for child in children if isinstance(child, (dict, list))), default=level)


class LogLimiter:
    """At most one log line per kind per `interval_s`; the next line tells how many were held back.
    Kinds are the caller's constants (a request's kind and outcome), never text from a request."""

    def __init__(self, logger: logging.Logger, interval_s: float = LOG_INTERVAL_S):
        self._logger = logger
        self._interval_s = interval_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def log(self, level: int, kind: str, message: str, *args: Any) -> bool:
        """Log `message % args` unless a line of `kind` was logged less than interval_s ago; True when logged."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self._interval_s:
                self._held[kind] = self._held.get(kind, 0) + 1
                return False
            self._last[kind] = now
            held = self._held.pop(kind, 0)
        if held:
            message += " (and %d more like it in the last %d s, not logged)"
            args = (*args, held, round(self._interval_s))
        self._logger.log(level, message, *args)
        return True


class RateWindow:
    """How many events happened in the last `window_s`: `allow()` counts one if fewer than `limit` did."""

    def __init__(self, limit: int, window_s: float = 60.0):
        self.limit = limit
        self.window_s = window_s
        self._times: deque[float] = deque()

    def allow(self, now_mono: float | None = None) -> bool:
        now = time.monotonic() if now_mono is None else now_mono
        while self._times and now - self._times[0] >= self.window_s:
            self._times.popleft()
        if len(self._times) >= self.limit:
            return False
        self._times.append(now)
        return True
