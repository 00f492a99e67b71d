"""`edge-agent push`: send a bundle to boards over MQTT in chunks and collect what each one answers.

No TensorFlow and no runtime: the bundle's bytes, paho through edge_agent.sinks.mqtt, and the
conversation in edge_agent.models.update_protocol. One MQTT client serves every target; each
target moves through begin → (accepted) chunks → end → (missing → resend → end)* → received →
verified → activated, or stops at `rejected`. At most `window` chunks per device wait for the
broker's acknowledgement, which paces the sender and drives the progress bars.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from edge_agent.host.fleet import BrokerAddress
from edge_agent.host.progress import ProgressBoard
from edge_agent.models.update_protocol import (
    DEFAULT_CHUNK_SIZE,
    PushBegin,
    chunk_count,
    models_base,
    new_id,
    push_topic,
)
from edge_agent.sinks.mqtt import Delivery, MqttListener

logger = logging.getLogger(__name__)

TICK_S = 0.01
END_RESEND_S = 5.0  # an `end` without an answer is sent again after this long
MAX_INFLIGHT_TOTAL = 1000
SUBSCRIBE_TIMEOUT_S = 10.0

ACTIVATED, REJECTED, ROLLED_BACK, NO_ANSWER = "activated", "rejected", "rolled back", "no answer"


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


@dataclass
class PushResult:
    """One device's outcome: result is activated, rejected, rolled back or no answer."""

    device: str
    result: str
    reason: str = ""
    previous: dict | None = None
    new: dict | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.result == ACTIVATED

    def to_dict(self) -> dict:
        return {"device": self.device, "result": self.result, "reason": self.reason, "previous": self.previous,
                "new": self.new, "seconds": round(self.seconds, 3)}


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
    result: PushResult | None = None

    def enter(self, state: str) -> None:
        self.state, self.state_mono = state, time.monotonic()

    def finish(self, result: str, reason: str = "", previous: dict | None = None, new: dict | None = None) -> None:
        self.result = PushResult(self.device, result, reason, previous, new, time.monotonic() - self.started_mono)
        self.state = "done"


class Pusher:
    """Push one bundle to several devices at once; `run()` returns a result per device."""

    def __init__(self, bundle: bytes, devices: list[str], options: PushOptions, progress: ProgressBoard | None = None):
        self.bundle = bundle
        self.options = options
        self.transfer_id = new_id("push")
        self.begin = PushBegin(self.transfer_id, options.pipeline, len(bundle), hashlib.sha256(bundle).hexdigest(),
                               options.chunk_size, chunk_count(len(bundle), options.chunk_size))
        self.targets = {device: _Target(device, self.begin.chunks) for device in devices}
        self.progress = progress
        self._events: queue.Queue[tuple[str, dict]] = queue.Queue()
        self._listener: MqttListener | None = None

    def run(self) -> list[PushResult]:
        options = self.options
        topics = [f"{models_base(options.prefix, device)}/events" for device in self.targets]
        inflight = min(MAX_INFLIGHT_TOTAL, max(20, options.window * len(self.targets)))
        self._listener = MqttListener(options.broker.host, options.broker.port, topics, self._on_message,
                                      client_id=f"edge-{self.transfer_id}", max_inflight=inflight,
                                      username=options.broker.username, password=options.broker.password)
        self._listener.start(SUBSCRIBE_TIMEOUT_S)
        try:
            for target in self.targets.values():
                target.started_mono = time.monotonic()
                target.enter("begin")
                self._publish(target.device, "begin", self.begin.to_json())
            while any(t.state != "done" for t in self.targets.values()):
                self._take_events()
                for target in self.targets.values():
                    self._advance(target)
                    self._show(target)
                if self.progress is not None:
                    self.progress.draw()
                time.sleep(TICK_S)
            if self.progress is not None:
                self.progress.draw(final=True)
        finally:
            self._listener.stop()
        return [self.targets[device].result for device in self.targets]

    # --- sending -------------------------------------------------------------------
    def _publish(self, device: str, part: str, payload: str | bytes) -> Delivery:
        return self._listener.publish(push_topic(self.options.prefix, device, self.transfer_id, part), payload, qos=1)

    def _advance(self, target: _Target) -> None:
        now = time.monotonic()
        options = self.options
        if target.state == "done":
            return
        if target.state == "watching":
            if now >= target.watch_until:
                target.state = "done"
            return
        if target.state == "begin" and now - target.state_mono > options.answer_timeout_s:
            target.finish(NO_ANSWER, f"no answer to begin within {options.answer_timeout_s:g} s "
                                     "(is the agent running, connected, with an MQTT sink?)")
            return
        if now - target.started_mono > options.timeout_s:
            target.finish(NO_ANSWER, f"no final answer within {options.timeout_s:g} s (last state: {target.state})")
            return
        if target.state == "sending":
            self._send_chunks(target)
        elif target.state == "ending" and now - target.state_mono > END_RESEND_S:
            target.enter("ending")
            self._publish(target.device, "end", json.dumps({"transfer_id": self.transfer_id}))

    def _send_chunks(self, target: _Target) -> None:
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
            target.enter("ending")
            self._publish(target.device, "end", json.dumps({"transfer_id": self.transfer_id}))

    # --- answers -------------------------------------------------------------------
    def _on_message(self, topic: str, payload: bytes) -> None:
        """On paho's thread: keep the events of this transfer, in order."""
        try:
            event = json.loads(payload)
        except ValueError:
            return
        if isinstance(event, dict) and event.get("transfer_id") == self.transfer_id:
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
        if kind == "accepted" and target.state == "begin":
            target.enter("sending")
        elif kind == "missing":
            missing = [i for i in event.get("missing", []) if isinstance(i, int) and 0 <= i < target.total]
            target.resend.extend(i for i in missing if i not in target.resend)
            target.acked.difference_update(missing)
            target.enter("sending")
        elif kind == "received":
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


def format_results(results: list[PushResult], success: str = ACTIVATED) -> str:
    """The final table: device, result (with the reason), previous and new model, seconds."""
    rows = [("device", "result", "previous", "new", "seconds")]
    for r in results:
        if r.result == success:
            result = f"{r.result} ({r.reason})" if r.reason else r.result
        else:
            result = f"{r.result}: {r.reason}" if r.reason else r.result
        rows.append((r.device, result, describe_model(r.previous), describe_model(r.new), f"{r.seconds:.1f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(cell.rjust(widths[i]) if i == 4 else cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()
             for row in rows]
    lines.append(f"{sum(r.result == success for r in results)} of {len(results)} device(s) {success}")
    return "\n".join(lines)


def describe_model(model: dict | None) -> str:
    if not model:
        return "-"
    return " ".join(part for part in (model.get("name", ""), model.get("version", "")) if part) or "-"
