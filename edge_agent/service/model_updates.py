"""The board's side of `edge-agent push`, `models rollback`, `models list` and fleet discovery: the MQTT conversation.

Requests arrive on `{prefix}/{device}/models/...` and, for a group push, on the topics of the
board's groups `{prefix}/fleet/group/G/push/...` (edge_agent.delivery.update_protocol) through the
agent's one MQTT client; paho's thread only puts them on a bounded queue. One worker thread takes
them in order, lets each through the RequestGate (service.request_gate: bounded parsing, signature,
clock window, replays, begin rate) and hands it on: fleet discovery to service.fleet_answers, a
push's begin, chunks, end and abort to the transfer slot (service.push_receiver), rollback and
list requests answered here. Between requests the worker expires idle transfers and judges
probation. Installs and rollbacks run on a job thread, one at a time (service.model_changes);
every answer is an event (service.update_answers).

What an unauthenticated client can make the board do is bounded: its messages are refused with a
short reason (rate-limited, without the id they claim, so they cannot end someone else's push), its
chunks are dropped unless they are the ones a signed begin listed, and it can neither re-arm a
transfer's timeout nor abort it.
"""

from __future__ import annotations

import logging
import queue
import threading
from pathlib import Path

from edge_agent.delivery.request_limits import LogLimiter, clip
from edge_agent.delivery.fleet_protocol import discover_topic
from edge_agent.delivery.transfer import remove_leftovers
from edge_agent.delivery.update_protocol import ProtocolError, group_base, group_push_filter, models_base
from edge_agent.service.fleet_answers import FleetAnswers
from edge_agent.service.model_changes import ModelChanges
from edge_agent.service.model_install import ModelInstaller, PipelineHost
from edge_agent.service.model_source import load_trusted_keys
from edge_agent.service.push_receiver import PushReceiver
from edge_agent.service.request_gate import Refusal, Request, RequestGate, gate_mode
from edge_agent.service.update_answers import UpdateAnswers

logger = logging.getLogger(__name__)

POLL_S = 0.2
STOP_JOIN_S = 5.0
INBOX_MESSAGES = 512  # requests waiting for the worker; beyond this (a flood) they are dropped and counted
INBOX_BYTES = 64 * 1024 * 1024


class ModelUpdates:
    """Receives pushes, rollback and list requests for every pipeline of one agent."""

    def __init__(self, host: PipelineHost, publisher, watchdog_timeout_s: float):
        config = host.config
        self.host = host
        self.publisher = publisher  # MqttPublisher: publish() and subscribe()
        self.settings = config.models
        self.base = models_base(config.mqtt.topic_prefix, config.device_id)
        self.incoming = Path(config.state_dir) / "incoming"
        mode = gate_mode(config.trusted_keys, config.allow_unsigned_pushes)
        keys = load_trusted_keys(config.trusted_keys) if config.trusted_keys else []
        self.gate = RequestGate(self.base, config.device_id, mode, keys, self.settings.max_clock_skew_s,
                                self.settings.max_begins_per_minute)
        self.discover_topic = discover_topic(config.mqtt.topic_prefix)
        self.prefix = config.mqtt.topic_prefix
        self.groups: tuple[str, ...] = ()  # the groups whose pushes this board hears (follows a reload)
        self._groups_topic = group_base(self.prefix, "")  # every group push topic starts so
        self.fleet = FleetAnswers(host, lambda topic, payload: publisher.publish(topic, payload, qos=1),
                                  self.settings.max_discovery_answers_per_minute)
        self._inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._inbox_bytes = 0
        self._inbox_lock = threading.Lock()
        self.dropped_requests = 0  # messages dropped because the inbox was full (a flood)
        self._stop = threading.Event()
        self._log = LogLimiter(logger)
        self.installer = ModelInstaller(host, self._stop)
        self.answers = UpdateAnswers(host, publisher, f"{self.base}/events", self._log)
        self.changes = ModelChanges(host, self.installer, self.answers, watchdog_timeout_s)
        self.pushes = PushReceiver(self.settings, self.incoming, self.installer, self.changes, self.answers, self._log)
        self._worker = threading.Thread(target=self._run, name="model-updates", daemon=True)

    # --- life cycle ----------------------------------------------------------------
    def start(self) -> None:
        removed = remove_leftovers(self.incoming)
        if removed:
            logger.info("removed %d unfinished model transfer(s) from %s", removed, self.incoming)
        for topic in ("push/#", "rollback", "list"):
            self.publisher.subscribe(f"{self.base}/{topic}", self._receive)
        self.publisher.subscribe(self.discover_topic, self._receive)
        self._follow_groups()
        self._worker.start()
        modes = {"signed": f"requests signed by {len(self.gate.keys)} trusted key(s)",
                 "open": "UNSIGNED requests from anyone on the broker (no trusted_keys, allow_unsigned_models = true)",
                 "closed": "no requests (no trusted_keys to authenticate them)"}
        logger.info("model updates: %s on %s/#, taking %s", "enabled" if self.settings.enabled else "disabled "
                    "(models.enabled = false; requests are answered with rejected)", self.base, modes[self.gate.mode])

    def _follow_groups(self) -> None:
        """Hear the pushes of every group the config lists now: a reload may add groups (the state and the
        discovery answers name them at once). A group the config no longer lists stays subscribed (the
        publisher cannot unsubscribe) but its pushes are refused silently, as any group's not listed."""
        groups = tuple(self.host.config.groups)
        if groups == self.groups:
            return
        for group in groups:
            if group not in self.groups:
                self.publisher.subscribe(group_push_filter(self.prefix, group), self._receive)
        self.groups = groups

    def stop(self) -> None:
        """Stop taking requests, kill a running self-test, delete an unfinished transfer."""
        self._stop.set()
        self._worker.join(STOP_JOIN_S)
        self.changes.join(STOP_JOIN_S)
        self.pushes.discard()

    def counters(self) -> dict[str, int]:
        """What the state message shows of requests the board did not act on."""
        return {"dropped_chunks": self.pushes.dropped_chunks, "dropped_requests": self.dropped_requests}

    def in_probation(self, pipeline: str) -> bool:
        return pipeline in self.installer.probation

    def _receive(self, topic: str, payload: bytes) -> None:
        """On paho's network thread: hand over (or drop, when a flood has filled the inbox), nothing else."""
        with self._inbox_lock:
            if self._inbox.qsize() >= INBOX_MESSAGES or self._inbox_bytes + len(payload) > INBOX_BYTES:
                self.dropped_requests += 1
                dropped = self.dropped_requests
                full = True
            else:
                self._inbox_bytes += len(payload)
                full = False
        if full:
            self._log.log(logging.WARNING, "inbox-full", "model requests arrive faster than they can be handled: "
                          "%d dropped so far (the pusher resends what a board asks for)", dropped)
            return
        self._inbox.put((topic, payload))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                topic, payload = self._inbox.get(timeout=POLL_S)
            except queue.Empty:
                pass
            else:
                with self._inbox_lock:
                    self._inbox_bytes -= len(payload)
                try:
                    self._handle(topic, payload)
                except Exception:  # the edge of the loop: one bad request must not end the updater
                    logger.exception("model request on %s failed", clip(topic))
            try:
                self._follow_groups()
                self.pushes.expire()
                self.changes.watch_probation()
            except Exception:
                logger.exception("model updates: watching transfers and probation failed")

    # --- requests ------------------------------------------------------------------
    def _handle(self, topic: str, payload: bytes) -> None:
        if topic == self.discover_topic:
            self._discover(payload)
            return
        try:
            if topic.startswith(self._groups_topic):
                request = self.gate.admit_group(topic, payload, self.prefix, self.groups)
            else:
                request = self.gate.admit(topic, payload)
        except Refusal as refusal:
            self.answers.refused(refusal)
            return
        if request.kind == "chunk":
            self.pushes.chunk(request)
        elif request.kind == "begin":
            self.pushes.begin(request)
        elif request.kind == "end":
            self.pushes.end(request)
        elif request.kind == "abort":
            self.pushes.abort(request)
        elif request.kind == "rollback":
            self._rollback_request(request)
        else:
            self._list_request(request)

    def _discover(self, payload: bytes) -> None:
        """Fleet discovery: answered (within its rate) when the gate admits it; every refusal silent."""
        try:
            request = self.gate.admit_discover(payload)
        except Refusal as refusal:
            self._log.log(logging.INFO if refusal.kind == "replay" else logging.WARNING, refusal.kind,
                          "fleet discovery request ignored: %s", clip(refusal.reason, 300))
            return
        self.fleet.handle(request)

    def _rollback_request(self, request: Request) -> None:
        request_id = request.request_id
        try:
            pipeline = self.changes.resolve_pipeline(request.data.get("pipeline") or "")
        except ProtocolError as err:
            self.answers.event("rejected", request_id=request_id, reason=str(err))
            return
        refusal = self.pushes.refusal()
        if refusal:
            self.answers.event("rejected", request_id=request_id, pipeline=pipeline, reason=refusal)
            return
        self.changes.start(f"rollback {request_id}",
                           lambda: self.changes.rollback(pipeline, request_id=request_id, reason="requested"))

    def _list_request(self, request: Request) -> None:
        from edge_agent.delivery.store import StoreError, describe_stores

        try:
            models = describe_stores(self.host.config.state_dir)
        except StoreError as err:
            self.answers.event("rejected", request_id=request.request_id, reason=str(err))
            return
        self.answers.event("listed", request_id=request.request_id, models=models)


__all__ = ["ModelUpdates"]
