"""Which boards there are and which groups they belong to: discovery answers merged with retained state.

Two sources, heard on one connection for `discover_s` seconds:
  - the answers to a discover request (edge_agent.delivery.fleet_protocol), which work on any MQTT
    3.1.1 broker: every board that takes the request answers live on `{prefix}/{device}/fleet/answer`;
  - the retained `{prefix}/{device}/state` (groups) and `{prefix}/{device}/status` ("online" /
    "offline") every agent publishes, which mosquitto delivers to wildcard subscriptions at once
    (RabbitMQ does not: retained messages reach only exact-topic subscriptions there), and the live
    state boards publish every state_interval_s.
A board that answers is online, with the groups it names; one known only from its state is listed
with the groups its state names, and offline when its retained status says so. Two answers to one
request under one device id from different agent instances are two boards configured with the
same id: that id is reported as a duplicate and none of them is a member of anything.
Answers that cannot be parsed are counted and logged once; answers to other requests are not ours.

`discover_s` is the longest wait. It ends sooner where the broker delivers retained state to the
wildcard subscription (mosquitto): once every board the state names (in the group, not offline)
has answered, every board that answered has a state too, and nothing new came for QUIET_S. On a
broker without retained state the answering boards have no state, so the whole discover_s is
spent listening: there is no other way to know that the last board has answered.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from edge_agent.delivery.fleet_protocol import (
    DEFAULT_DISCOVER_S,
    EVERY_DEVICE,
    DISCOVER,
    BoardAnswer,
    DiscoverRequest,
    answers_filter,
    discover_topic,
    parse_answer,
)
from edge_agent.delivery.request_limits import ProtocolError, clip
from edge_agent.delivery.signed_request import sign_request
from edge_agent.delivery.update_protocol import new_id
from edge_agent.host.broker import BrokerAddress, broker_listener

if TYPE_CHECKING:  # the key comes loaded; importing `cryptography` here would load it for every command
    from edge_agent.delivery.keys import PrivateKey

logger = logging.getLogger(__name__)

__all__ = ["BrokerAddress", "DEFAULT_DISCOVER_S", "DeviceInfo", "Fleet", "discover_fleet", "read_fleet"]

SUBSCRIBE_TIMEOUT_S = 10.0
QUIET_S = 0.5  # retained only (discover_s = 0): no new device for this long, the broker has sent them all
MAX_RETAINED_WAIT_S = 5.0
ANSWER, STATE = "answer", "state"


@dataclass
class DeviceInfo:
    """What is known of one device: from its answer when it gave one, else from its retained state."""

    device: str
    groups: list[str] = field(default_factory=list)
    sources: set[str] = field(default_factory=set)  # "answer", "state"
    offline: bool = False  # its retained status says "offline" (and it did not answer)
    agent_version: str = ""
    pipelines: list[dict] = field(default_factory=list)  # [{name, status, model: {name, version, sha256}}]
    instances: set[str] = field(default_factory=set)  # more than one: several boards use this id
    answer_s: float | None = None  # seconds from the request to its (first) answer: what --discover-s must cover

    def to_dict(self) -> dict:
        return {"device": self.device, "groups": self.groups, "sources": sorted(self.sources),
                "status": "offline" if self.offline else "online" if ANSWER in self.sources else "unknown",
                "agent_version": self.agent_version, "pipelines": self.pipelines,
                "duplicate": len(self.instances) > 1, "answers": len(self.instances),
                "answer_s": round(self.answer_s, 3) if self.answer_s is not None else None}


@dataclass
class Fleet:
    """Every device heard of, the ids answered by more than one board, and the answers ignored."""

    devices: dict[str, DeviceInfo] = field(default_factory=dict)
    malformed: int = 0  # answers that could not be parsed (counted, logged once)
    discover_s: float = 0.0

    @property
    def duplicates(self) -> list[str]:
        return sorted(d for d, info in self.devices.items() if len(info.instances) > 1)

    @property
    def offline(self) -> set[str]:
        return {d for d, info in self.devices.items() if info.offline}

    def in_group(self, group: str) -> list[str]:
        """Every device that names `group` (duplicates and offline ones included), sorted."""
        return sorted(d for d, info in self.devices.items() if not group or group in info.groups)

    def members(self, group: str) -> list[str]:
        """The devices of `group` a request can go to: not offline, not an id several boards use."""
        duplicates = set(self.duplicates)
        return [d for d in self.in_group(group) if d not in duplicates and not self.devices[d].offline]


class _Collector:
    """Builds a Fleet from the messages paho hands over (on its thread)."""

    def __init__(self, prefix: str, request_id: str):
        self.prefix = prefix.rstrip("/")
        self.request_id = request_id
        self.fleet = Fleet()
        self.lock = threading.Lock()
        self.last_new_device_mono = time.monotonic()
        self.sent_mono = 0.0  # when the discover request was handed over
        self.last_change_mono = time.monotonic()  # a new device or an answer
        self._first_problem = ""

    def _device(self, device: str) -> DeviceInfo:
        info = self.fleet.devices.get(device)
        if info is None:
            info = self.fleet.devices[device] = DeviceInfo(device)
            self.last_new_device_mono = self.last_change_mono = time.monotonic()
        return info

    def on_message(self, topic: str, payload: bytes) -> None:
        parts = topic.split("/")
        with self.lock:
            if parts[-2:] == ["fleet", "answer"]:
                self._answer(topic, payload)
            elif len(parts) >= 2 and parts[-1] in ("state", "status") and payload:
                self._retained(parts[-2], parts[-1], payload)

    def _answer(self, topic: str, payload: bytes) -> None:
        try:
            answer = parse_answer(topic, payload, self.prefix)
        except ProtocolError as err:
            self.fleet.malformed += 1
            if not self._first_problem:
                self._first_problem = str(err)
                logger.warning("a discovery answer ignored: %s (answers like it are counted, not logged)",
                               clip(err, 300))
            return
        if answer.request_id != self.request_id:
            return  # another pusher's discovery
        self._take(answer)

    def _take(self, answer: BoardAnswer) -> None:
        info = self._device(answer.device)
        info.instances.add(answer.instance)
        if ANSWER in info.sources and len(info.instances) > 1:
            return  # a second board under this id: the first one's details stand, the id is a duplicate
        info.sources.add(ANSWER)
        info.answer_s = time.monotonic() - self.sent_mono
        self.last_change_mono = time.monotonic()
        info.offline = False
        info.groups = list(answer.groups)
        info.agent_version = answer.agent_version
        info.pipelines = [p.to_dict() for p in answer.pipelines]

    def everyone_answered(self, group: str) -> bool:
        """Whether the wait can end early (see the module docstring); called with the lock held."""
        now = time.monotonic()
        if now - self.sent_mono < QUIET_S or now - self.last_change_mono < QUIET_S:
            return False
        relevant = [info for info in self.fleet.devices.values()
                    if (not group or group in info.groups) and not info.offline]
        return bool(relevant) and all(info.sources == {ANSWER, STATE} for info in relevant)

    def _retained(self, device: str, kind: str, payload: bytes) -> None:
        info = self._device(device)
        answered = ANSWER in info.sources
        if kind == "status":
            if not answered:
                info.offline = payload == b"offline"
            return
        try:
            state = json.loads(payload)
            groups = state.get("groups", []) if isinstance(state, dict) else []
        except ValueError:
            logger.warning("device %s: its retained state is not JSON; ignored", clip(device, 80))
            return
        info.sources.add(STATE)
        if answered:
            return  # the answer is newer and complete
        info.groups = [g for g in groups if isinstance(g, str)] if isinstance(groups, list) else []
        version = state.get("version")
        info.agent_version = version if isinstance(version, str) else ""
        pipelines = state.get("pipelines")
        if isinstance(pipelines, dict):
            info.pipelines = [{"name": str(name), "status": str(p.get("status", "")),
                               "model": p.get("model") if isinstance(p.get("model"), dict) else {}}
                              for name, p in pipelines.items() if isinstance(p, dict)]


def discover_fleet(broker: BrokerAddress, prefix: str = "edge", group: str = "",
                   discover_s: float = DEFAULT_DISCOVER_S, key: PrivateKey | None = None) -> Fleet:
    """Ask every board (only the members of `group`, when given) who it is, and read the retained state,
    for at most `discover_s` seconds. discover_s = 0 sends no request and reads retained messages only
    (enough on mosquitto, where they reach wildcard subscriptions; nothing on RabbitMQ)."""
    request = DiscoverRequest(new_id("discover"), group)
    collector = _Collector(prefix, request.request_id)
    base = prefix.rstrip("/")
    listener = broker_listener(broker, [f"{base}/+/state", f"{base}/+/status", answers_filter(base)],
                               collector.on_message, client_id=f"edge-{request.request_id}", max_inflight=20)
    listener.start(SUBSCRIBE_TIMEOUT_S)
    try:
        started = time.monotonic()
        if discover_s > 0:
            params = request.to_params()
            message = sign_request(key, DISCOVER, EVERY_DEVICE, request.request_id, params) if key else params
            collector.sent_mono = time.monotonic()
            listener.publish(discover_topic(base), json.dumps(message, separators=(",", ":")), qos=1)
            while time.monotonic() - started < discover_s:
                with collector.lock:
                    if collector.everyone_answered(group):
                        break
                time.sleep(0.05)
        else:
            collector.last_new_device_mono = started
            while time.monotonic() - started < MAX_RETAINED_WAIT_S:
                with collector.lock:
                    if time.monotonic() - collector.last_new_device_mono >= QUIET_S:
                        break
                time.sleep(0.05)
    finally:
        listener.stop()
    with collector.lock:
        fleet = collector.fleet
        fleet.discover_s = discover_s
    if fleet.malformed > 1:
        logger.warning("%d discovery answers ignored in all (malformed)", fleet.malformed)
    return fleet


def read_fleet(broker: BrokerAddress, prefix: str) -> Fleet:
    """The retained state and status only (the behaviour before discovery; `--discover-s 0`)."""
    return discover_fleet(broker, prefix, discover_s=0)
