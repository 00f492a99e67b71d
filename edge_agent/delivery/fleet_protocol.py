"""Fleet discovery over MQTT: a request every board hears, and each board's answer on its own topic.

Retained messages alone do not find a fleet on every broker: RabbitMQ delivers them only to
exact-topic subscriptions (never to `edge/+/state`) and keeps them per cluster node. A request and
live answers work on any MQTT 3.1.1 broker:

  {prefix}/fleet/discover         host → boards  JSON {request_id, group} (+ auth: signed like every
                                                 control request, for the device "*"); QoS 1, never retained
  {prefix}/{device}/fleet/answer  board → host   JSON {request_id, device, instance, agent_version, groups,
                                                 pipelines: [{name, status, model: {name, version, sha256}}],
                                                 truncated, ts}; QoS 1, never retained

`group` ("" = every board) lets only the members answer, so a group push to 20 boards of a fleet
of 1,000 costs 20 answers. The answer goes to a topic of the board's own, never to one named in the
request: an attacker who may publish a discover (an open board takes unsigned ones) cannot point
a fleet's answers at another topic (another board's request topics, say), and a broker ACL that
lets each board write only under `{prefix}/{device}/` still allows it. `instance` is a random
token drawn when the agent starts: two answers to one request under the same device id with
different instances are two boards configured with one id. An answer is at most
MAX_ANSWER_BYTES (its pipeline list is cut, `truncated: true`, beyond that).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

from edge_agent.delivery.request_limits import ProtocolError, clip_repr, parse_json_object
from edge_agent.delivery.update_protocol import is_valid_id

DEFAULT_DISCOVER_S = 6.0  # how long a pusher listens: above the default state interval (5 s), so a live state counts too
DISCOVER = "discover"  # the action a discover request is signed for
EVERY_DEVICE = "*"  # the device a discover request is signed for: any board may take it (the action binds it)
MAX_DISCOVER_BYTES = 4096
MAX_ANSWER_BYTES = 16 * 1024
MAX_LISTED = 64  # groups or pipelines an answer may carry
MAX_TEXT = 128  # characters of one name, version or status
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_INSTANCE = re.compile(r"^[0-9a-f]{8,64}$")


def discover_topic(prefix: str) -> str:
    return f"{prefix.rstrip('/')}/fleet/discover"


def answer_topic(prefix: str, device: str) -> str:
    return f"{prefix.rstrip('/')}/{device}/fleet/answer"


def answers_filter(prefix: str) -> str:
    """The subscription that hears every board's answers (live messages reach wildcards on every broker)."""
    return answer_topic(prefix, "+")


@dataclass(frozen=True)
class DiscoverRequest:
    request_id: str
    group: str = ""  # "" = every board answers

    def to_params(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "group": self.group}


def parse_discover(data: dict[str, Any]) -> DiscoverRequest:
    """Check a discover request's fields (already parsed within bounds); ProtocolError says what is wrong."""
    request_id = data.get("request_id")
    if not is_valid_id(request_id):
        raise ProtocolError(f"discover: request_id must be 1-64 letters, digits, '.', '_' or '-', "
                            f"got {clip_repr(request_id, 80)}")
    group = data.get("group", "")
    if not isinstance(group, str) or len(group) > MAX_TEXT:
        raise ProtocolError(f"discover: group must be a group name of at most {MAX_TEXT} characters, "
                            f"got {clip_repr(group, 80)}")
    return DiscoverRequest(request_id, group)


@dataclass(frozen=True)
class PipelineInfo:
    name: str
    status: str
    model_name: str
    model_version: str
    model_sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status,
                "model": {"name": self.model_name, "version": self.model_version, "sha256": self.model_sha256}}


@dataclass(frozen=True)
class BoardAnswer:
    """What one board says about itself."""

    request_id: str
    device: str
    instance: str
    agent_version: str
    groups: tuple[str, ...]
    pipelines: tuple[PipelineInfo, ...]
    truncated: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "device": self.device, "instance": self.instance,
                "agent_version": self.agent_version, "groups": list(self.groups),
                "pipelines": [p.to_dict() for p in self.pipelines], "truncated": self.truncated}


def encode_answer(answer: BoardAnswer) -> bytes:
    """The answer's payload, at most MAX_ANSWER_BYTES: pipelines beyond what fits are left out (truncated)."""
    pipelines = list(answer.pipelines[:MAX_LISTED])
    truncated = answer.truncated or len(answer.pipelines) > MAX_LISTED
    base = {**answer.to_dict(), "groups": list(answer.groups[:MAX_LISTED])}
    while True:
        payload = json.dumps({**base, "pipelines": [p.to_dict() for p in pipelines], "truncated": truncated,
                              "ts": round(time.time(), 3)}, separators=(",", ":")).encode()
        if len(payload) <= MAX_ANSWER_BYTES or not pipelines:
            return payload
        pipelines.pop()
        truncated = True


def parse_answer(topic: str, payload: bytes, prefix: str) -> BoardAnswer:
    """A board's answer, checked field by field; ProtocolError names what is wrong (the pusher counts
    those and goes on: a board of another version, or someone else on the broker)."""
    base = prefix.rstrip("/") + "/"
    parts = topic[len(base):].split("/") if topic.startswith(base) else []
    if len(parts) != 3 or parts[1:] != ["fleet", "answer"]:
        raise ProtocolError(f"{clip_repr(topic)} is not an answer topic ({answers_filter(prefix)})")
    data = parse_json_object(payload, "discovery answer", MAX_ANSWER_BYTES)
    device = data.get("device")
    if device != parts[0]:
        raise ProtocolError(f"the answer on {clip_repr(topic)} names device {clip_repr(device, 80)}, "
                            "not its topic's")
    request_id, instance = data.get("request_id"), data.get("instance")
    if not is_valid_id(request_id):
        raise ProtocolError(f"the answer of {device} has no valid request_id")
    if not isinstance(instance, str) or not _INSTANCE.match(instance):
        raise ProtocolError(f"the answer of {device}: instance must be 8-64 lower-case hex digits")
    version = _text(data.get("agent_version", ""), f"the answer of {device}: agent_version")
    groups = data.get("groups", [])
    if not isinstance(groups, list) or len(groups) > MAX_LISTED:
        raise ProtocolError(f"the answer of {device}: groups must be a list of at most {MAX_LISTED} names")
    pipelines = data.get("pipelines", [])
    if not isinstance(pipelines, list) or len(pipelines) > MAX_LISTED:
        raise ProtocolError(f"the answer of {device}: pipelines must be a list of at most {MAX_LISTED}")
    truncated = data.get("truncated", False)
    return BoardAnswer(request_id, device, instance, version,
                       tuple(_text(g, f"the answer of {device}: a group") for g in groups),
                       tuple(_pipeline(p, device) for p in pipelines), truncated is True)


def _pipeline(value: Any, device: str) -> PipelineInfo:
    what = f"the answer of {device}: a pipeline"
    if not isinstance(value, dict) or not isinstance(value.get("model", {}), dict):
        raise ProtocolError(f"{what} must be an object with name, status and model")
    model = value.get("model", {})
    sha256 = model.get("sha256", "")
    if not isinstance(sha256, str) or (sha256 and not _SHA256.match(sha256)):
        raise ProtocolError(f"{what}: model.sha256 must be 64 lower-case hex digits")
    return PipelineInfo(_text(value.get("name"), f"{what} name"), _text(value.get("status", ""), f"{what} status"),
                        _text(model.get("name", ""), f"{what} model name"),
                        _text(model.get("version", ""), f"{what} model version"), sha256)


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise ProtocolError(f"{what} must be text of at most {MAX_TEXT} characters, got {clip_repr(value, 60)}")
    return value
