"""The MQTT conversation of a model push and of a rollback, shared by `edge-agent push` and the agent.

Topics, all under `{prefix}/{device}/models/`, QoS 1, never retained:

  push/{transfer_id}/begin       host → board  JSON {transfer_id, pipeline, size, sha256, chunk_size, chunks,
                                               name (optional: the bundle's file name, for messages)}
  push/{transfer_id}/chunk/{n}   host → board  raw bytes [n * chunk_size, (n + 1) * chunk_size) of the bundle
  push/{transfer_id}/end         host → board  JSON {transfer_id}
  rollback                       host → board  JSON {request_id, pipeline}
  events                         board → host  JSON {transfer_id | request_id, device, pipeline, event,
                                               reason, previous, new, ts} (+ "missing": [n, ...])

Events of a push, in order: `accepted` (begin is fine: send the chunks), `missing` (answer to
`end` while chunks are absent: resend them, then `end` again), `received` (every chunk is there,
size and SHA-256 match), `verified` (signature trusted and self-test passed), `activated`; or
`rejected` (with the reason) at any point. A rollback answers `rolled_back` or `rejected`; an
automatic rollback during probation is reported as `rolled_back` with the transfer id of the
model it replaced.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

from edge_agent.errors import InputError

DEFAULT_CHUNK_SIZE = 64 * 1024
MIN_CHUNK_SIZE = 256
MAX_CHUNK_SIZE = 16 * 1024 * 1024
EVENTS = ("accepted", "missing", "received", "verified", "activated", "rejected", "rolled_back")
FINAL_EVENTS = frozenset({"activated", "rejected", "rolled_back"})
_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^([^/\x00-\x1f\x7f]{1,128})?$")


class ProtocolError(InputError, ValueError):
    """A request does not follow the protocol; the message says what was wrong."""


@dataclass(frozen=True)
class PushBegin:
    """What the board needs to know before the first chunk."""

    transfer_id: str
    pipeline: str  # "" lets a board with one pipeline pick it
    size: int
    sha256: str
    chunk_size: int
    chunks: int
    name: str = ""  # the bundle's file name on the pusher's side; the board's messages call it so

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


@dataclass(frozen=True)
class ModelsTopic:
    """A request topic taken apart: kind is begin, chunk, end, abort or rollback."""

    kind: str
    transfer_id: str = ""
    index: int = -1


def models_base(prefix: str, device: str) -> str:
    return f"{prefix.rstrip('/')}/{device}/models"


def push_topic(prefix: str, device: str, transfer_id: str, part: str) -> str:
    """`part` is "begin", "end" or "chunk/{n}"."""
    return f"{models_base(prefix, device)}/push/{transfer_id}/{part}"


def chunk_count(size: int, chunk_size: int) -> int:
    return max(1, math.ceil(size / chunk_size))


def chunk_length(index: int, size: int, chunk_size: int) -> int:
    """How many bytes chunk `index` holds (the last one may be short)."""
    return min(chunk_size, size - index * chunk_size)


def new_id(kind: str) -> str:
    """A transfer or request id: readable, sortable by time, unique enough for one fleet."""
    return f"{kind}-{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"


def is_valid_id(text: str) -> bool:
    return bool(_ID.match(text))


def parse_json_object(payload: bytes, what: str) -> dict[str, Any]:
    """The payload as a JSON object; ProtocolError naming `what` when it is not one."""
    try:
        value = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ProtocolError(f"the {what} payload is not JSON ({err}): send a JSON object") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"the {what} payload must be a JSON object, got {type(value).__name__}")
    return value


def parse_models_topic(topic: str, base: str) -> ModelsTopic:
    """Take apart a request topic under `base` ({prefix}/{device}/models); ProtocolError if unknown."""
    rest = topic[len(base) + 1:].split("/") if topic.startswith(base + "/") else []
    if rest == ["rollback"]:
        return ModelsTopic("rollback")
    if len(rest) >= 3 and rest[0] == "push" and is_valid_id(rest[1]):
        if rest[2:] in (["begin"], ["end"], ["abort"]):
            return ModelsTopic(rest[2], rest[1])
        if len(rest) == 4 and rest[2] == "chunk":
            if not rest[3].isdigit():
                raise ProtocolError(f"chunk index {rest[3]!r} in {topic} is not a whole number")
            return ModelsTopic("chunk", rest[1], int(rest[3]))
    raise ProtocolError(f"{topic} is not a model request topic (push/ID/begin|chunk/N|end|abort, rollback)")


def parse_begin(payload: bytes, transfer_id: str) -> PushBegin:
    """Check a begin message; ProtocolError names the first field that is wrong."""
    data = parse_json_object(payload, "begin")

    def whole(key: str, minimum: int, maximum: int | None = None) -> int:
        value = data.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum or (maximum and value > maximum):
            limits = f">= {minimum}" + (f" and <= {maximum}" if maximum else "")
            raise ProtocolError(f"begin: {key} must be a whole number {limits}, got {value!r}")
        return value

    if data.get("transfer_id") != transfer_id:
        raise ProtocolError(f"begin: transfer_id {data.get('transfer_id')!r} does not match the topic's {transfer_id!r}")
    pipeline = data.get("pipeline", "")
    if not isinstance(pipeline, str):
        raise ProtocolError(f"begin: pipeline must be a string, got {pipeline!r}")
    sha256 = data.get("sha256")
    if not isinstance(sha256, str) or not _SHA256.match(sha256):
        raise ProtocolError("begin: sha256 must be 64 lower-case hex digits")
    size = whole("size", 1)
    chunk_size = whole("chunk_size", MIN_CHUNK_SIZE, MAX_CHUNK_SIZE)
    chunks = whole("chunks", 1)
    if chunks != chunk_count(size, chunk_size):
        raise ProtocolError(f"begin: {size} bytes in chunks of {chunk_size} make {chunk_count(size, chunk_size)} chunks, "
                            f"not {chunks}")
    name = data.get("name", "")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ProtocolError("begin: name must be a file name of 1-128 printable characters without '/'")
    return PushBegin(transfer_id, pipeline, size, sha256, chunk_size, chunks, name)
