"""The MQTT conversation of a model push, a rollback and a listing, shared by the tools and the agent.

Topics, all under `{prefix}/{device}/models/`, QoS 1, never retained:

  push/{transfer_id}/begin       host → board  JSON PushBegin: {transfer_id, pipeline, size, sha256, chunk_size,
                                               chunks, chunk_hashes, name, allow_downgrade, abort_token_sha256}
  push/{transfer_id}/chunk/{n}   host → board  raw bytes [n * chunk_size, (n + 1) * chunk_size) of the bundle
  push/{transfer_id}/end         host → board  JSON {transfer_id}
  push/{transfer_id}/abort       host → board  JSON {transfer_id, reason, abort_token}
  rollback                       host → board  JSON {request_id, pipeline}
  list                           host → board  JSON {request_id}
  events                         board → host  JSON {transfer_id | request_id, device, pipeline, event,
                                               reason, previous, new, ts} (+ "missing": [n, ...], "models")

A push to a group (`edge-agent push --group G`) sends the bundle once for the whole group, on
topics every member subscribes to (one per group in its config `groups`), QoS 1, never retained:

  {prefix}/fleet/group/{G}/push/{transfer_id}/begin      host → boards  JSON PushBegin + {group, devices}
  {prefix}/fleet/group/{G}/push/{transfer_id}/chunk/{n}  host → boards  raw bytes, as above

The group begin is signed once for the device "*" with the action `group_begin`; its `devices`
(covered by the signature) name the boards expected, and a board not named ignores it. Everything
after it is per board, on the board's own topics as above: `accepted`, the pusher's `end`, the
board's `missing` answered by a unicast resend of just those chunks, the final events. The group
topics live under `{prefix}/fleet/`, beside discovery, so no group name can collide with a
device's own `{prefix}/{device}/...` topics.

Every JSON request is signed (edge_agent.delivery.signed_request: an `auth` object) unless the
board has no trusted keys and allows unsigned models. Chunks are not signed one by one: the
signed begin lists the SHA-256 of every chunk (`chunk_hashes`), so a board keeps only the chunks
the pusher that began the transfer sent, and drops any other without failing the transfer.
Unsigned transfers are bound the same way, and only the holder of the secret whose SHA-256 the
begin names (`abort_token_sha256`) can abort one.

Events of a push, in order: `accepted` (begin is fine: send the chunks), `missing` (answer to
`end` while chunks are absent: resend them, then `end` again), `received` (every chunk is there,
size and SHA-256 match), `verified` (signature trusted and self-test passed), `activated`; or
`rejected` (with the reason) at any point. An `end` for a transfer that is over is answered with
its final event again (a pusher that missed it during a broker blip asks so). A rollback
answers `rolled_back` or `rejected`, a listing `listed` (with "models") or `rejected`; an
automatic rollback during probation is reported as `rolled_back` with the transfer id of the
model it replaced. A request the board could not authenticate or parse is answered `rejected`
without its id (an id in it is shown as `claimed_id`), so nobody can end someone else's push
by sending nonsense under its id.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import re
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

import json

from edge_agent.delivery.request_limits import ProtocolError, clip, clip_repr, parse_json_object

DEFAULT_CHUNK_SIZE = 64 * 1024
MIN_CHUNK_SIZE = 256
MAX_CHUNK_SIZE = 16 * 1024 * 1024
MAX_CHUNKS = 65536
MAX_BEGIN_BYTES = 4 * 1024 * 1024  # chunk_hashes: 44 base64 characters per chunk
EVENTS = ("accepted", "missing", "received", "verified", "activated", "rejected", "rolled_back", "listed")
FINAL_EVENTS = frozenset({"activated", "rejected", "rolled_back", "listed"})
MAX_GROUP_DEVICES = 20000  # boards one group begin may name (66 bytes each at most)
GROUP_BEGIN = "group_begin"  # the action a group begin is signed for (for the device "*")
REQUEST_KINDS = ("begin", "chunk", "end", "abort", "rollback", "list")
_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^([^/\x00-\x1f\x7f]{1,128})?$")
_NOT_IN_ID = re.compile(r"[/+#\s\x00-\x1f\x7f]")  # a device id is any text without these (config topic_safe)
MAX_DEVICE_CHARS = 128
_INDEX = re.compile(r"[0-9]{1,9}")  # ASCII digits only: str.isdigit() also takes '١' and '²'

__all__ = ["ProtocolError", "PushBegin", "GroupBegin", "ModelsTopic", "parse_begin", "parse_json_object", "parse_models_topic"]


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
    chunk_hashes: str = ""  # base64 of the chunks' SHA-256 digests, concatenated in order
    allow_downgrade: bool = False  # install even if the bundle's version is older than the active one
    abort_token_sha256: str = ""  # SHA-256 (hex) of the secret an unsigned abort must carry

    def to_params(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_params(), separators=(",", ":"))

    def chunk_digests(self) -> list[bytes]:
        """Each chunk's SHA-256, in order ([] when the begin lists none)."""
        raw = base64.b64decode(self.chunk_hashes) if self.chunk_hashes else b""
        return [raw[i:i + 32] for i in range(0, len(raw), 32)]


def describe_bundle(transfer_id: str, content: bytes, chunk_size: int = DEFAULT_CHUNK_SIZE, pipeline: str = "",
                    name: str = "", allow_downgrade: bool = False, abort_token: str = "") -> PushBegin:
    """The begin message for pushing `content` in chunks of `chunk_size`."""
    chunks = chunk_count(len(content), chunk_size)
    digests = b"".join(hashlib.sha256(content[i * chunk_size:(i + 1) * chunk_size]).digest() for i in range(chunks))
    return PushBegin(transfer_id, pipeline, len(content), hashlib.sha256(content).hexdigest(), chunk_size, chunks,
                     name, base64.b64encode(digests).decode("ascii"), allow_downgrade,
                     hashlib.sha256(abort_token.encode()).hexdigest() if abort_token else "")


@dataclass(frozen=True)
class ModelsTopic:
    """A request topic taken apart: kind is begin, chunk, end, abort, rollback or list."""

    kind: str
    transfer_id: str = ""
    index: int = -1


def models_base(prefix: str, device: str) -> str:
    return f"{prefix.rstrip('/')}/{device}/models"


def push_topic(prefix: str, device: str, transfer_id: str, part: str) -> str:
    """`part` is "begin", "end", "abort" or "chunk/{n}"."""
    return f"{models_base(prefix, device)}/push/{transfer_id}/{part}"


def group_base(prefix: str, group: str) -> str:
    return f"{prefix.rstrip('/')}/fleet/group/{group}"


def group_push_topic(prefix: str, group: str, transfer_id: str, part: str) -> str:
    """`part` is "begin" or "chunk/{n}": what a group push sends once for every member."""
    return f"{group_base(prefix, group)}/push/{transfer_id}/{part}"


def group_push_filter(prefix: str, group: str) -> str:
    """What a member of `group` subscribes to."""
    return f"{group_base(prefix, group)}/push/#"


def parse_group_topic(topic: str, prefix: str, groups: tuple[str, ...]) -> tuple[str, ModelsTopic]:
    """(group, begin or chunk) of a group push topic of one of `groups`; ProtocolError otherwise."""
    for group in groups:
        base = group_base(prefix, group)
        if topic.startswith(base + "/push/"):
            where = parse_models_topic(topic, base)
            if where.kind in ("begin", "chunk"):
                return group, where
    raise ProtocolError(f"{clip(topic)} is not a group push topic of this board's groups "
                        "(fleet/group/G/push/ID/begin|chunk/N)")


def chunk_count(size: int, chunk_size: int) -> int:
    return max(1, math.ceil(size / chunk_size))


def chunk_length(index: int, size: int, chunk_size: int) -> int:
    """How many bytes chunk `index` holds (the last one may be short)."""
    return min(chunk_size, size - index * chunk_size)


def new_id(kind: str) -> str:
    """A transfer or request id: readable, sortable by time, unique enough for one fleet."""
    return f"{kind}-{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"


def is_valid_id(text: Any) -> bool:
    return isinstance(text, str) and bool(_ID.match(text))


def parse_models_topic(topic: str, base: str) -> ModelsTopic:
    """Take apart a request topic under `base` ({prefix}/{device}/models); ProtocolError if unknown."""
    rest = topic[len(base) + 1:].split("/") if topic.startswith(base + "/") else []
    if rest in (["rollback"], ["list"]):
        return ModelsTopic(rest[0])
    if len(rest) >= 3 and rest[0] == "push" and is_valid_id(rest[1]):
        if rest[2:] in (["begin"], ["end"], ["abort"]):
            return ModelsTopic(rest[2], rest[1])
        if len(rest) == 4 and rest[2] == "chunk":
            if not _INDEX.fullmatch(rest[3]):
                raise ProtocolError(f"chunk index {clip_repr(rest[3], 24)} in {clip(topic)} is not a whole number "
                                    "written in ASCII digits (0-9)")
            return ModelsTopic("chunk", rest[1], int(rest[3]))
    raise ProtocolError(f"{clip(topic)} is not a model request topic "
                        "(push/ID/begin|chunk/N|end|abort, rollback, list)")


def request_id_of(data: dict[str, Any], what: str, key: str = "request_id") -> str:
    value = data.get(key)
    if not is_valid_id(value):
        raise ProtocolError(f"{what}: {key} must be 1-64 letters, digits, '.', '_' or '-', got {clip_repr(value, 80)}")
    return value


def parse_begin(payload: bytes | dict[str, Any], transfer_id: str) -> PushBegin:
    """Check a begin message (bytes, or the object already parsed); ProtocolError names the first field
    that is wrong."""
    data = parse_json_object(payload, "begin", MAX_BEGIN_BYTES) if isinstance(payload, bytes) else payload

    def whole(key: str, minimum: int, maximum: int | None = None) -> int:
        value = data.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum or (maximum and value > maximum):
            limits = f">= {minimum}" + (f" and <= {maximum}" if maximum else "")
            raise ProtocolError(f"begin: {key} must be a whole number {limits}, got {clip_repr(value, 40)}")
        return value

    if data.get("transfer_id") != transfer_id:
        raise ProtocolError(f"begin: transfer_id {clip_repr(data.get('transfer_id'), 80)} does not match the topic's "
                            f"{transfer_id!r}")
    pipeline = data.get("pipeline", "")
    if not isinstance(pipeline, str):
        raise ProtocolError(f"begin: pipeline must be a string, got {clip_repr(pipeline, 40)}")
    sha256 = data.get("sha256")
    if not isinstance(sha256, str) or not _SHA256.match(sha256):
        raise ProtocolError("begin: sha256 must be 64 lower-case hex digits")
    size = whole("size", 1)
    chunk_size = whole("chunk_size", MIN_CHUNK_SIZE, MAX_CHUNK_SIZE)
    chunks = whole("chunks", 1)
    if chunks != chunk_count(size, chunk_size):
        raise ProtocolError(f"begin: {size} bytes in chunks of {chunk_size} make {chunk_count(size, chunk_size)} chunks, "
                            f"not {chunks}")
    if chunks > MAX_CHUNKS:
        raise ProtocolError(f"begin: {chunks} chunks are too many (at most {MAX_CHUNKS}): push with a larger --chunk-kb")
    name = data.get("name", "")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ProtocolError("begin: name must be a file name of 1-128 printable characters without '/'")
    hashes = data.get("chunk_hashes")
    if hashes is None:
        raise ProtocolError("begin: chunk_hashes is missing: the pusher's edge-agent is older than the board's; "
                            "upgrade edge-agent on the workstation")
    try:
        raw = base64.b64decode(hashes, validate=True) if isinstance(hashes, str) else b""
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32 * chunks:
        raise ProtocolError(f"begin: chunk_hashes must be the base64 of {chunks} SHA-256 digests ({32 * chunks} bytes)")
    allow_downgrade = data.get("allow_downgrade", False)
    if not isinstance(allow_downgrade, bool):
        raise ProtocolError("begin: allow_downgrade must be true or false")
    token_sha = data.get("abort_token_sha256", "")
    if not isinstance(token_sha, str) or (token_sha and not _SHA256.match(token_sha)):
        raise ProtocolError("begin: abort_token_sha256 must be 64 lower-case hex digits or empty")
    return PushBegin(transfer_id, pipeline, size, sha256, chunk_size, chunks, name, hashes, allow_downgrade, token_sha)


@dataclass(frozen=True)
class GroupBegin:
    """A group push's begin: the transfer, the group it is for and the boards it names."""

    push: PushBegin
    group: str
    devices: tuple[str, ...]


def group_begin_params(begin: PushBegin, group: str, devices: list[str]) -> dict[str, Any]:
    return {**begin.to_params(), "group": group, "devices": list(devices)}


def parse_group_begin(data: dict[str, Any], transfer_id: str, group: str) -> GroupBegin:
    """Check a group begin (already parsed within bounds): the push fields as parse_begin, the group the
    topic names, and a list of device ids."""
    if data.get("group") != group:
        raise ProtocolError(f"group begin: group {clip_repr(data.get('group'), 80)} does not match the topic's "
                            f"{group!r}")
    devices = data.get("devices")
    if (not isinstance(devices, list) or not 1 <= len(devices) <= MAX_GROUP_DEVICES
                or not all(isinstance(d, str) and 0 < len(d) <= MAX_DEVICE_CHARS and not _NOT_IN_ID.search(d)
                       for d in devices)):
        raise ProtocolError(f"group begin: devices must be a list of 1 to {MAX_GROUP_DEVICES} device ids")
    fields = {k: v for k, v in data.items() if k not in ("group", "devices")}
    return GroupBegin(parse_begin(fields, transfer_id), group, tuple(devices))


def abort_token_matches(begin: PushBegin, token: Any) -> bool:
    """Whether an unsigned abort carries the secret the begin committed to."""
    if not begin.abort_token_sha256 or not isinstance(token, str) or len(token) > 256:
        return False
    return secrets.compare_digest(hashlib.sha256(token.encode()).hexdigest(), begin.abort_token_sha256)
