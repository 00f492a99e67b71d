"""`edge-agent push`: send a bundle to boards over MQTT in chunks and collect what each one answers.

No TensorFlow and no runtime: the bundle's bytes, paho through edge_agent.mqtt, and the
conversation in edge_agent.delivery.update_protocol. One MQTT client serves every target; each
target moves through begin → (accepted) chunks → end → (missing → resend → end)* → received →
verified → activated, or stops at `rejected`. At most `window` chunks per device wait for the
broker's acknowledgement, which paces the sender and drives the progress bars. A board the pusher
gives up on mid-transfer (timeout, Ctrl-C, a broker refusing the chunks) is sent `abort`, so it
is free for the next push at once.

A group push (`options.group`) sends the bundle once for the whole group: one begin on the group's
topic (signed once, naming the devices), then, when every device has answered it (or run out of
time), each chunk once on the group's chunk topic, paced by the broker's acknowledgements. From
there on every device is on its own, as above: `end`, its `missing` chunks re-sent on its own
topic, its final answer. So the pusher hands the broker the bundle about once, not once per device.

With a signing key every request (begin, end, abort) is signed for its board
(edge_agent.delivery.signed_request); the chunks are bound to the signed begin by their hashes.
A broker that restarts mid-push costs a pause, not the push: messages handed over while it is
away are sent when it is back, the board asks again for chunks it lost (`missing`), and a
pusher that may have missed an answer meanwhile asks again with `end` until it hears one.

Each device's outcome and the table printed from them: host.push_results.
"""

from __future__ import annotations

import json
import logging
import queue
import secrets
import time
from collections import deque
from dataclasses import dataclass, field

from edge_agent.delivery.keys import PrivateKey
from edge_agent.delivery.signed_request import sign_request
from edge_agent.delivery.fleet_protocol import EVERY_DEVICE
from edge_agent.delivery.update_protocol import (
    DEFAULT_CHUNK_SIZE,
    GROUP_BEGIN,
    describe_bundle,
    group_begin_params,
    group_push_topic,
    models_base,
    new_id,
    push_topic,
)
from edge_agent.host.broker import BrokerAddress, broker_listener
from edge_agent.host.progress import ProgressBoard
from edge_agent.host.push_results import ACTIVATED, NO_ANSWER, REJECTED, ROLLED_BACK, PushResult
from edge_agent.mqtt.client import Delivery
from edge_agent.mqtt.listener import MqttListener

logger = logging.getLogger(__name__)

TICK_S = 0.01
END_RESEND_S = 5.0  # an `end` without an answer is sent again after this long
MAX_INFLIGHT_TOTAL = 1000
SUBSCRIBE_TIMEOUT_S = 10.0
MAX_FRUITLESS_DISCONNECTS = 3  # the broker closed the connection this often with no chunk getting through
ABORT_DELIVERY_S = 3.0
REFUSAL_GRACE_S = 2.0  # a refusal without our id (we could not be authenticated) wins if nothing else comes


@dataclass(frozen=True)
class PushOptions:
    broker: BrokerAddress
    prefix: str = "edge"
    pipeline: str = ""  # "" lets a board with one pipeline pick it
    chunk_size: int = DEFAULT_CHUNK_SIZE
    answer_timeout_s: float = 10.0  # how long a board has to answer `begin`
    timeout_s: float = 300.0  # how long one board may take from begin to its final answer
    watch_s: float = 0.0  # keep listening this long after `activated`, to see an automatic rollback
    window: int = 8  # chunks per device waiting for the broker's acknowledgement
    skip_first: frozenset[int] = frozenset()  # chunks left out of the first round (rehearses a lost chunk)
    key: PrivateKey | None = None  # signs every request; None: unsigned (only boards without trusted keys take it)
    allow_downgrade: bool = False  # the signed begin says an older version may replace the active one
    group: str = ""  # the devices are this group's members: send the bundle once on the group's topics


@dataclass
class _Target:
    device: str
    total: int
    state: str = "begin"  # begin, sending, ending, installing, watching, done
    next_chunk: int = 0
    resend: deque[int] = field(default_factory=deque)
    inflight: deque[tuple[int, Delivery]] = field(default_factory=deque)
    acked: set[int] = field(default_factory=set)
    started_mono: float = 0.0
    state_mono: float = 0.0  # when the current state began (answer and end-resend timers)
    watch_until: float = 0.0
    aborting: bool = False  # we gave up while the board held the transfer: send it `abort`
    reask: bool = False  # the broker went away while the board was working: an answer may be lost
    refusal: str = ""  # a rejection that did not carry our id (the board could not authenticate us)
    refusal_mono: float = 0.0
    result: PushResult | None = None

    def enter(self, state: str) -> None:
        self.state, self.state_mono = state, time.monotonic()

    def finish(self, result: str, reason: str = "", previous: dict | None = None, new: dict | None = None,
               give_up: bool = False) -> None:
        """The final result; `give_up` when it is the pusher's decision, not the board's answer."""
        self.result = PushResult(self.device, result, reason, previous, new, time.monotonic() - self.started_mono)
        self.aborting = give_up and self.state in ("sending", "ending")
        self.state = "done"


class Pusher:
    """Push one bundle to several devices at once; `run()` returns a result per device."""

    def __init__(self, bundle: bytes, devices: list[str], options: PushOptions, progress: ProgressBoard | None = None,
                 name: str = ""):
        """`name` is the bundle's file name: the boards' messages call the bundle so."""
        self.bundle = bundle
        self.options = options
        self.transfer_id = new_id("push")
        self._abort_token = secrets.token_hex(16)  # an unsigned abort must show it (the begin names its hash)
        self.begin = describe_bundle(self.transfer_id, bundle, options.chunk_size, options.pipeline, name,
                                     options.allow_downgrade, self._abort_token)
        self.targets = {device: _Target(device, self.begin.chunks) for device in devices}
        self.progress = progress
        self._events: queue.Queue[tuple[str, dict]] = queue.Queue()
        self._listener: MqttListener | None = None
        self._disconnects_seen = 0
        self._fruitless_disconnects = 0
        self._acked_at_disconnect = 0
        self._broadcast_next = 0  # group push: the next chunk to send on the group's topic
        self._broadcast_inflight: deque[tuple[int, Delivery]] = deque()
        self._broadcast_done = not options.group

    def run(self) -> list[PushResult]:
        options = self.options
        topics = [f"{models_base(options.prefix, device)}/events" for device in self.targets]
        inflight = min(MAX_INFLIGHT_TOTAL, max(20, options.window * len(self.targets)))
        self._listener = broker_listener(options.broker, topics, self._on_message, f"edge-{self.transfer_id}", inflight)
        self._listener.start(SUBSCRIBE_TIMEOUT_S)
        try:
            for target in self.targets.values():
                target.started_mono = time.monotonic()
                target.enter("begin")
                if not options.group:
                    self._send_request(target.device, "begin", self.begin.to_params())
            if options.group:
                self._send_group_begin()
            while any(t.state != "done" for t in self.targets.values()):
                self._take_events()
                self._check_broker()
                self._broadcast()
                for target in self.targets.values():
                    self._advance(target)
                    self._show(target)
                if self.progress is not None:
                    self.progress.draw()
                time.sleep(TICK_S)
            if self.progress is not None:
                self.progress.draw(final=True)
        except BaseException as err:  # Ctrl-C, or a bug: the boards still hear that we gave up
            reason = "interrupted" if isinstance(err, KeyboardInterrupt) else f"the pusher failed: {err}"
            for target in self.targets.values():
                if target.state != "done":
                    target.finish(NO_ANSWER, reason, give_up=True)
            raise
        finally:
            self._listener.stop()
            self._abort_given_up()
        return [self.targets[device].result for device in self.targets]

    def _abort_given_up(self) -> None:
        """Tell the boards whose transfer we gave up on to drop it now, not after their timeout. A fresh
        client: the old one may still hold chunks the broker refuses, and would send those first."""
        given_up = [t for t in self.targets.values() if t.aborting]
        if not given_up:
            return
        options = self.options
        listener = broker_listener(options.broker, [f"{models_base(options.prefix, t.device)}/events" for t in given_up],
                                   lambda topic, payload: None, f"edge-{self.transfer_id}-abort")
        try:
            listener.start(SUBSCRIBE_TIMEOUT_S)
            deliveries = [listener.publish(push_topic(options.prefix, t.device, self.transfer_id, "abort"),
                                           self._request(t.device, "abort", {
                                               "transfer_id": self.transfer_id, "reason": t.result.reason[:500],
                                               "abort_token": self._abort_token}))
                          for t in given_up]
            deadline = time.monotonic() + ABORT_DELIVERY_S
            while not all(d.done() for d in deliveries) and time.monotonic() < deadline:
                time.sleep(TICK_S)
        except ConnectionError as err:
            logger.warning("could not tell %d board(s) to drop the transfer (%s); they drop it after their "
                           "models.transfer_timeout_s", len(given_up), err)
        finally:
            listener.stop()

    # --- sending -------------------------------------------------------------------
    def _publish(self, device: str, part: str, payload: str | bytes) -> Delivery:
        return self._listener.publish(push_topic(self.options.prefix, device, self.transfer_id, part), payload, qos=1)

    def _request(self, device: str, action: str, params: dict) -> str:
        """A request's payload: signed for `device` when we have a key (each send signed afresh)."""
        key = self.options.key
        message = sign_request(key, action, device, self.transfer_id, params) if key is not None else params
        return json.dumps(message, separators=(",", ":"))

    def _send_request(self, device: str, action: str, params: dict) -> Delivery:
        return self._publish(device, action, self._request(device, action, params))

    def _send_group_begin(self) -> None:
        """One begin for every device, signed once (for the device "*"), naming them."""
        options = self.options
        params = group_begin_params(self.begin, options.group, list(self.targets))
        key = options.key
        message = sign_request(key, GROUP_BEGIN, EVERY_DEVICE, self.transfer_id, params) if key is not None else params
        self._listener.publish(group_push_topic(options.prefix, options.group, self.transfer_id, "begin"),
                               json.dumps(message, separators=(",", ":")), qos=1)

    def _broadcast(self) -> None:
        """Group push: once every device has answered the begin, each chunk once on the group's topic, at most
        `window` waiting for the broker; each device that accepted counts an acknowledged chunk as sent. Then
        every device goes on alone (its end, its missing chunks by unicast)."""
        if self._broadcast_done or any(t.state == "begin" for t in self.targets.values()):
            return
        receivers = [t for t in self.targets.values() if t.state == "sending"]
        inflight = self._broadcast_inflight
        while inflight and inflight[0][1].done():
            index = inflight.popleft()[0]
            for target in receivers:
                target.acked.add(index)
        total = self.begin.chunks
        while receivers and len(inflight) < self.options.window and self._broadcast_next < total:
            index = self._broadcast_next
            self._broadcast_next += 1
            if index in self.options.skip_first:
                continue
            start = index * self.begin.chunk_size
            topic = group_push_topic(self.options.prefix, self.options.group, self.transfer_id, f"chunk/{index}")
            inflight.append((index, self._listener.publish(topic, self.bundle[start:start + self.begin.chunk_size],
                                                           qos=1)))
        if not receivers or (not inflight and self._broadcast_next >= total):
            self._broadcast_done = True
            for target in self.targets.values():
                target.next_chunk = total  # what is still missing, each device asks for (and gets by unicast)

    def _send_end(self, target: _Target) -> None:
        target.enter(target.state if target.state == "installing" else "ending")
        self._send_request(target.device, "end", {"transfer_id": self.transfer_id})

    def _advance(self, target: _Target) -> None:
        now = time.monotonic()
        options = self.options
        if target.state == "done":
            return
        if target.state == "watching":
            if now >= target.watch_until:
                target.state = "done"
            return
        if target.state == "begin" and target.refusal and now - target.refusal_mono > REFUSAL_GRACE_S:
            target.finish(REJECTED, target.refusal)
            return
        if target.state == "begin" and now - target.state_mono > options.answer_timeout_s:
            target.finish(NO_ANSWER, f"no answer to begin within {options.answer_timeout_s:g} s "
                                     "(is the agent running, connected, with an MQTT sink? a busy broker with many "
                                     "boards may need a longer --answer-timeout)")
            return
        if now - target.started_mono > options.timeout_s:
            target.finish(NO_ANSWER, f"no final answer within {options.timeout_s:g} s (last state: {target.state})",
                          give_up=True)
            return
        if target.state == "sending":
            self._send_chunks(target)
        elif target.state == "ending" and now - target.state_mono > END_RESEND_S:
            self._send_end(target)
        elif target.state == "installing" and target.reask and now - target.state_mono > END_RESEND_S:
            self._send_end(target)  # the board answers a finished transfer's `end` with its final event

    def _send_chunks(self, target: _Target) -> None:
        if not self._broadcast_done:
            return  # the group's broadcast sends the first round
        while target.inflight and target.inflight[0][1].done():
            target.acked.add(target.inflight.popleft()[0])
        while len(target.inflight) < self.options.window:
            if target.resend:
                index = target.resend.popleft()
            elif target.next_chunk < target.total:
                index = target.next_chunk
                target.next_chunk += 1
                if index in self.options.skip_first:
                    continue
            else:
                break
            start = index * self.begin.chunk_size
            chunk = self.bundle[start:start + self.begin.chunk_size]
            target.inflight.append((index, self._publish(target.device, f"chunk/{index}", chunk)))
        if not target.inflight and not target.resend and target.next_chunk >= target.total:
            self._send_end(target)

    def _check_broker(self) -> None:
        """A broker that keeps closing the connection while no chunk gets through most likely refuses
        messages as large as our chunks: say so rather than retry until the timeout."""
        disconnects = self._listener.disconnects
        if disconnects == self._disconnects_seen:
            return
        self._disconnects_seen = disconnects
        for target in self.targets.values():
            if target.state in ("ending", "installing"):
                target.reask = True
        acked = sum(len(t.acked) for t in self.targets.values())
        self._fruitless_disconnects = self._fruitless_disconnects + 1 if acked == self._acked_at_disconnect else 1
        self._acked_at_disconnect = acked
        if self._fruitless_disconnects < MAX_FRUITLESS_DISCONNECTS:
            return
        reason = (f"the broker closed the connection {self._fruitless_disconnects} times while chunks of "
                  f"{self.begin.chunk_size // 1024} KiB were being sent and none got through: its message size limit "
                  "(mosquitto: max_packet_size / message_size_limit) is probably lower; push again with a smaller --chunk-kb")
        for target in self.targets.values():
            if target.state == "sending":
                target.finish(REJECTED, reason, give_up=True)

    # --- answers -------------------------------------------------------------------
    def _on_message(self, topic: str, payload: bytes) -> None:
        """On paho's thread: keep the events of this transfer, in order."""
        try:
            event = json.loads(payload)
        except ValueError:
            return
        if isinstance(event, dict) and self.transfer_id in (event.get("transfer_id"), event.get("claimed_id")):
            self._events.put((topic.split("/")[-3], event))

    def _take_events(self) -> None:
        while True:
            try:
                device, event = self._events.get_nowait()
            except queue.Empty:
                return
            target = self.targets.get(device)
            if target is not None and target.state != "done":
                self._on_event(target, event)

    def _on_event(self, target: _Target, event: dict) -> None:
        kind, reason = event.get("event"), str(event.get("reason") or "")
        if event.get("transfer_id") != self.transfer_id:
            # a refusal of a request the board could not authenticate: it names our id only as claimed,
            # since anyone could have sent it; taken as the answer only if no real one follows
            if kind == "rejected" and target.state == "begin" and not target.refusal:
                target.refusal, target.refusal_mono = reason or "no reason given", time.monotonic()
            return
        if kind == "accepted" and target.state == "begin":
            target.enter("sending")
        elif kind == "missing":
            missing = [i for i in event.get("missing", []) if isinstance(i, int) and 0 <= i < target.total]
            target.resend.extend(i for i in missing if i not in target.resend)
            target.acked.difference_update(missing)
            target.enter("sending")
        elif kind in ("received", "verified") and target.state in ("sending", "ending"):
            target.acked = set(range(target.total))
            target.enter("installing")
        elif kind == "activated":
            target.finish(ACTIVATED, reason, event.get("previous"), event.get("new"))
            if self.options.watch_s > 0:
                target.state, target.watch_until = "watching", time.monotonic() + self.options.watch_s
        elif kind == "rejected":
            target.finish(REJECTED, reason or "no reason given", event.get("previous"), event.get("new"))
        elif kind == "rolled_back":
            previous = target.result.previous if target.result is not None else event.get("new")
            target.finish(ROLLED_BACK, reason, previous, event.get("previous"))
        # "verified" needs no action: the board goes on to activate

    def _show(self, target: _Target) -> None:
        if self.progress is None:
            return
        if target.state == "done" and target.result is not None:
            status = target.result.result
        else:
            status = {"begin": "waiting for the board", "sending": "sending", "ending": "sent",
                      "installing": "verifying", "watching": "activated, watching"}.get(target.state, target.state)
        self.progress.update(target.device, len(target.acked), target.total, status)

