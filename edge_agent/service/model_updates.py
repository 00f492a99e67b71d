"""The board's side of `edge-agent push`, `models rollback`, `models list` and fleet discovery: the MQTT conversation.

Requests arrive on `{prefix}/{device}/models/...` and, for a group push, on the topics of the
board's groups `{prefix}/fleet/group/G/push/...` (edge_agent.delivery.update_protocol) through the
agent's one MQTT client; paho's thread only puts them on a bounded queue. One worker thread takes
them in order, lets each through the RequestGate (service.request_gate: bounded parsing, signature,
clock window, replays, begin rate), answers fleet discovery (`{prefix}/fleet/discover`,
service.fleet_answers), reassembles transfers (delivery.transfer), answers every request
with an event, expires idle transfers and judges probation. A complete transfer is installed
(service.model_install) on a job thread, one at a time, so a second push that arrives meanwhile is
refused at once ("busy with transfer X") -- unless the transfer holding the slot is unsigned or has
made no progress for PREEMPT_IDLE_S, which a signed push may take over.

What an unauthenticated client can make the board do is bounded: its messages are refused with a
short reason (rate-limited, without the id they claim, so they cannot end someone else's push), its
chunks are dropped unless they are the ones a signed begin listed, and it can neither re-arm a
transfer's timeout nor abort it.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import OrderedDict, deque
from pathlib import Path
from typing import Callable

from edge_agent.delivery.request_limits import LogLimiter, RateWindow, clip
from edge_agent.delivery.fleet_protocol import discover_topic
from edge_agent.delivery.transfer import StrayChunk, Transfer, TransferError, remove_leftovers
from edge_agent.delivery.update_protocol import (
    FINAL_EVENTS,
    ProtocolError,
    PushBegin,
    abort_token_matches,
    is_valid_id,
    group_base,
    group_push_filter,
    models_base,
    parse_begin,
)
from edge_agent.service.fleet_answers import FleetAnswers
from edge_agent.service.model_install import ModelInstaller, PipelineHost, failure_reason
from edge_agent.service.model_source import load_trusted_keys
from edge_agent.service.probation import probation_failure, stall_limit_s
from edge_agent.service.request_gate import Refusal, Request, RequestGate, gate_mode

logger = logging.getLogger(__name__)

POLL_S = 0.2
STOP_JOIN_S = 5.0
REMEMBERED_IDS = 256  # finished transfers and requests whose final answer is repeated on request
MAX_MISSING_LISTED = 1000
INBOX_MESSAGES = 512  # requests waiting for the worker; beyond this (a flood) they are dropped and counted
INBOX_BYTES = 64 * 1024 * 1024
PREEMPT_IDLE_S = 15.0  # a transfer without progress this long (or a quarter of the timeout) may be taken over
REFUSAL_EVENTS_PER_MINUTE = 30  # answers to requests that were refused before being authenticated
MAX_REASON_CHARS = 1000


class ModelUpdates:
    """Receives pushes, rollback and list requests for every pipeline of one agent."""

    def __init__(self, host: PipelineHost, publisher, watchdog_timeout_s: float):
        config = host.config
        self.host = host
        self.publisher = publisher  # MqttPublisher: publish() and subscribe()
        self.settings = config.models
        self.watchdog_timeout_s = watchdog_timeout_s  # 0: systemd's watchdog is off
        self.base = models_base(config.mqtt.topic_prefix, config.device_id)
        self.events_topic = f"{self.base}/events"
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
        self.dropped_chunks = 0  # chunks of no transfer this board holds, or not the ones its begin lists
        self._stop = threading.Event()
        self.installer = ModelInstaller(host, self._stop)
        self._transfer: Transfer | None = None
        self._transfer_pipeline = ""
        self._job: threading.Thread | None = None
        self._job_label = ""
        self._done_ids: deque[str] = deque(maxlen=REMEMBERED_IDS)
        self._answers: OrderedDict[str, dict] = OrderedDict()  # id -> its latest event (final ones are repeated)
        self._answers_lock = threading.Lock()
        self._refusal_events = RateWindow(REFUSAL_EVENTS_PER_MINUTE)
        self._log = LogLimiter(logger)
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
        job = self._job
        if job is not None:
            job.join(STOP_JOIN_S)
        if self._transfer is not None:
            self._transfer.discard()
            self._transfer = None

    def counters(self) -> dict[str, int]:
        """What the state message shows of requests the board did not act on."""
        return {"dropped_chunks": self.dropped_chunks, "dropped_requests": self.dropped_requests}

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
                self._expire_transfer()
                self._watch_probation()
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
            self._refused(refusal)
            return
        if request.kind == "chunk":
            self._chunk(request)
        elif request.kind == "begin":
            self._begin(request)
        elif request.kind == "end":
            self._end(request)
        elif request.kind == "abort":
            self._abort(request)
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

    def _refused(self, refusal: Refusal) -> None:
        """A message refused before it was authenticated: a short answer without the id it claims (so it
        cannot end anyone's push), a rate-limited log line, and at most REFUSAL_EVENTS_PER_MINUTE answers."""
        self._log.log(logging.WARNING, refusal.kind, "model request refused: %s", clip(refusal.reason, 300))
        if refusal.silent or not self._refusal_events.allow():
            return
        claimed = refusal.claimed_id if is_valid_id(refusal.claimed_id) else ""
        self._event("rejected", reason=refusal.reason, claimed_id=claimed, log=False)

    def _refusal(self) -> str:
        """Why no new push or rollback can start now ("" when one can)."""
        if not self.settings.enabled:
            return "model updates are disabled on this device (models.enabled = false)"
        if self._transfer is not None:
            return f"busy with transfer {self._transfer.transfer_id}: try again when it has finished"
        if self._job is not None and self._job.is_alive():
            return f"busy with {self._job_label}: try again when it has finished"
        return ""

    def _begin(self, request: Request) -> None:
        transfer_id = request.transfer_id
        if transfer_id in self._done_ids:
            self._repeat_answer(transfer_id)  # a resent begin of a push that is over
            return
        if self._transfer is not None and self._transfer.transfer_id == transfer_id:
            # the same pusher asking again: answer, but do not re-arm the timeout (only progress does)
            self._event("accepted", transfer_id=transfer_id, pipeline=self._transfer_pipeline)
            return
        try:
            begin = parse_begin(request.data, transfer_id)
            pipeline = self._resolve_pipeline(begin.pipeline)
        except ProtocolError as err:
            self._refuse(transfer_id, "", str(err))
            return
        self._preempt_for(request)
        refusal = self._refusal()
        if refusal:
            self._refuse(transfer_id, pipeline, refusal)
            return
        if self._already_active(begin, pipeline):
            return
        try:
            self._transfer = Transfer(begin, self.incoming, int(self.settings.max_mb * 1024 * 1024))
        except TransferError as err:
            self._refuse(transfer_id, pipeline, str(err))
            return
        self._transfer.signed = bool(request.signed_by)
        self._transfer_pipeline = pipeline
        signer = f"signed by key {request.signed_by}" if request.signed_by else "UNSIGNED"
        logger.info("model transfer %s for pipeline %s (%s): %d bytes in %d chunks", transfer_id, pipeline, signer,
                    begin.size, begin.chunks)
        self._event("accepted", transfer_id=transfer_id, pipeline=pipeline)

    def _preempt_for(self, request: Request) -> None:
        """A signed push may take the slot of an unsigned transfer, or of one that stopped making progress."""
        transfer = self._transfer
        if transfer is None or not request.signed_by:
            return
        idle_s = transfer.idle_s()
        if transfer.signed and idle_s < min(PREEMPT_IDLE_S, self.settings.transfer_timeout_s / 4):
            return
        why = "it is unsigned" if not transfer.signed else f"it made no progress for {idle_s:.0f} s"
        logger.warning("model transfer %s given up for the signed transfer %s (%s)", transfer.transfer_id,
                       request.transfer_id, why)
        self._fail_transfer(f"pre-empted by the signed transfer {request.transfer_id} ({why})")

    def _already_active(self, begin: PushBegin, pipeline: str) -> bool:
        """A push of the bundle that is already active succeeds without a transfer."""
        active = self.installer.already_active(pipeline, begin.sha256)
        if active is None:
            return False
        self._done_ids.append(begin.transfer_id)
        self._event("activated", transfer_id=begin.transfer_id, pipeline=pipeline, reason="already active",
                    previous=active.describe(), new=active.describe())
        return True

    def _chunk(self, request: Request) -> None:
        transfer = self._transfer
        if transfer is None or transfer.transfer_id != request.transfer_id:
            # a transfer this board never accepted (a group push it refused or is not named in), one that
            # is over, or noise: dropped and counted
            self.dropped_chunks += 1
            self._log.log(logging.INFO, "chunk-unknown", "chunk %d of transfer %s, which this board does not hold, "
                          "dropped (%d so far)", request.index, clip(request.transfer_id, 80), self.dropped_chunks)
            return
        try:
            transfer.write_chunk(request.index, request.payload)
        except StrayChunk as err:  # not this transfer's chunk: someone else on the broker; the transfer goes on
            self.dropped_chunks += 1
            self._log.log(logging.WARNING, "chunk-stray", "dropped a chunk that is not the transfer's: %s", err)
        except TransferError as err:
            self._fail_transfer(str(err))

    def _end(self, request: Request) -> None:
        transfer_id = request.transfer_id
        transfer = self._transfer
        if transfer is None or transfer.transfer_id != transfer_id:
            if not self._repeat_answer(transfer_id):
                self._refuse(transfer_id, "", f"unknown transfer {transfer_id}: its begin never arrived or it "
                                              "expired; push again")
            return
        missing = transfer.missing()
        if missing:
            self._event("missing", transfer_id=transfer_id, pipeline=self._transfer_pipeline,
                        reason=f"{len(missing)} of {transfer.begin.chunks} chunks have not arrived",
                        missing=missing[:MAX_MISSING_LISTED])
            return
        try:
            path = transfer.complete()
        except TransferError as err:
            self._fail_transfer(str(err))
            return
        pipeline = self._transfer_pipeline
        label = clip(transfer.begin.name, 128) if transfer.begin.name else f"the bundle of transfer {transfer_id}"
        allow_downgrade = transfer.begin.allow_downgrade
        self._transfer = None
        self._done_ids.append(transfer_id)
        self._event("received", transfer_id=transfer_id, pipeline=pipeline)
        self._start_job(f"installing transfer {transfer_id}",
                        lambda: self._install(transfer_id, pipeline, path, label, allow_downgrade))

    def _repeat_answer(self, request_id: str) -> bool:
        """Publish a request's latest answer again (a pusher that lost it during a broker blip asks with
        a resent end or begin); False when the board does not remember the request."""
        with self._answers_lock:
            answer = self._answers.get(request_id)
        if answer is None:
            return request_id in self._done_ids
        self.publisher.publish(self.events_topic, json.dumps({**answer, "ts": round(time.time(), 3)},
                                                             separators=(",", ":")), qos=1)
        return True

    def _abort(self, request: Request) -> None:
        """The pusher gave up (timeout, Ctrl-C, a broker refusing its chunks): free the board at once.
        Only the pusher that began the transfer may: its signature, or (unsigned transfers) its token."""
        transfer = self._transfer
        if transfer is None or transfer.transfer_id != request.transfer_id:
            return
        if not request.signed_by and not abort_token_matches(transfer.begin, request.data.get("abort_token")):
            self._refused(Refusal(f"an abort of transfer {transfer.transfer_id} without the token its begin named: "
                                  "only the pusher that began a transfer can abort it", "abort-unauthenticated"))
            return
        reason = request.data.get("reason") or "no reason given"
        self._fail_transfer(f"aborted by the pusher: {clip(reason, 300)}")

    def _rollback_request(self, request: Request) -> None:
        request_id = request.request_id
        try:
            pipeline = self._resolve_pipeline(request.data.get("pipeline") or "")
        except ProtocolError as err:
            self._event("rejected", request_id=request_id, reason=str(err))
            return
        refusal = self._refusal()
        if refusal:
            self._event("rejected", request_id=request_id, pipeline=pipeline, reason=refusal)
            return
        self._start_job(f"rollback {request_id}",
                        lambda: self._guarded_rollback(pipeline, request_id=request_id, reason="requested"))

    def _list_request(self, request: Request) -> None:
        from edge_agent.delivery.store import StoreError, describe_stores

        try:
            models = describe_stores(self.host.config.state_dir)
        except StoreError as err:
            self._event("rejected", request_id=request.request_id, reason=str(err))
            return
        self._event("listed", request_id=request.request_id, models=models)

    def _resolve_pipeline(self, requested: object) -> str:
        names = [p.name for p in self.host.config.pipelines]
        if not isinstance(requested, str):
            raise ProtocolError(f"pipeline must be a string, got {clip(requested, 40)}")
        if requested:
            if requested not in names:
                raise ProtocolError(f"this device has no pipeline {clip(requested, 80)!s} (it runs {', '.join(names)})")
            return requested
        if len(names) == 1:
            return names[0]
        raise ProtocolError(f"name the pipeline: this device runs {', '.join(names)} (--pipeline NAME)")

    # --- transfers -----------------------------------------------------------------
    def _refuse(self, transfer_id: str, pipeline: str, reason: str) -> None:
        self._done_ids.append(transfer_id)
        self._event("rejected", transfer_id=transfer_id, pipeline=pipeline, reason=reason,
                    previous=self.installer.running_ref(pipeline))

    def _fail_transfer(self, reason: str) -> None:
        transfer, self._transfer = self._transfer, None
        if transfer is None:
            return
        transfer.discard()
        self._refuse(transfer.transfer_id, self._transfer_pipeline, reason)

    def _expire_transfer(self) -> None:
        transfer = self._transfer
        if transfer is not None and transfer.idle_s() > self.settings.transfer_timeout_s:
            self._fail_transfer(f"the transfer timed out: nothing arrived for {self.settings.transfer_timeout_s:g} s "
                                "(no new chunk; models.transfer_timeout_s); push again")

    def _start_job(self, label: str, work: Callable[[], None]) -> None:
        self._job_label = label
        self._job = threading.Thread(target=work, name="model-install", daemon=True)
        self._job.start()

    # --- model changes -------------------------------------------------------------
    def _install(self, transfer_id: str, pipeline: str, path: Path, label: str, allow_downgrade: bool) -> None:
        """On the job thread: install and report; every failure is a `rejected` event."""
        def verified(new: dict, note: str) -> None:
            self._event("verified", transfer_id=transfer_id, pipeline=pipeline, new=new, reason=note)

        try:
            previous, entry = self.installer.install(pipeline, path, label, transfer_id, verified, allow_downgrade)
        except Exception as err:  # the edge of the job: report it, the old model keeps serving
            self._event("rejected", transfer_id=transfer_id, pipeline=pipeline,
                        reason=failure_reason(err, self.host.config.state_dir),
                        previous=self.installer.running_ref(pipeline))
            return
        finally:
            path.unlink(missing_ok=True)  # gone already when it moved into the store
        self._event("activated", transfer_id=transfer_id, pipeline=pipeline, previous=previous, new=entry.describe())

    def _guarded_rollback(self, pipeline: str, request_id: str = "", transfer_id: str = "", reason: str = "",
                          expect_file: str = "", restart: bool = False) -> bool:
        """Roll back and report it; a failure is reported as `rejected`. True when rolled back."""
        try:
            given_up, restored = self.installer.rollback(pipeline, expect_file, restart)
        except Exception as err:  # the edge of a request: report it, keep serving
            self._event("rejected", transfer_id=transfer_id, request_id=request_id, pipeline=pipeline,
                        reason=f"rollback failed: {failure_reason(err, self.host.config.state_dir)}")
            return False
        self._event("rolled_back", transfer_id=transfer_id, request_id=request_id, pipeline=pipeline, reason=reason,
                    previous=given_up.describe(), new=restored.describe())
        return True

    def _watch_probation(self) -> None:
        now = time.monotonic()
        probations = self.installer.probation
        for probation in probations.entries():
            name = probation.pipeline
            pipeline = self.host.pipelines.get(name)
            if pipeline is None or pipeline.status == "stopped":
                probations.end(name, only=probation)  # removed by a reload, or its source ended: nothing to judge
                continue
            limit_s = stall_limit_s(self.watchdog_timeout_s, pipeline.config.max_fps)
            reason = probation_failure(pipeline.status, pipeline.error, now - pipeline.heartbeat_mono, limit_s)
            if reason:
                logger.error("pipeline %s: model %s %s failed its probation: %s; rolling back", name,
                             probation.model.name, probation.model.version, reason)
                # the entry stays until the rollback is done, so the agent does not take the failed
                # pipeline for a finished one and exit meanwhile
                self._guarded_rollback(name, transfer_id=probation.transfer_id, reason=reason,
                                       expect_file=probation.model.file, restart=True)
                probations.end(name, only=probation)
            elif probation.over(now):
                probations.end(name, only=probation)
                logger.info("pipeline %s: model %s %s passed its probation (%g s)", name, probation.model.name,
                            probation.model.version, self.settings.probation_s)

    # --- helpers -------------------------------------------------------------------
    def _event(self, event: str, *, transfer_id: str = "", request_id: str = "", pipeline: str = "", reason: str = "",
               previous: dict | None = None, new: dict | None = None, missing: list[int] | None = None,
               claimed_id: str = "", models: dict | None = None, log: bool = True) -> None:
        """Publish one event (QoS 1), remember it as the request's latest answer, and log it once."""
        reason = clip(reason, MAX_REASON_CHARS)
        payload: dict = {"device": self.host.config.device_id, "pipeline": pipeline, "event": event, "reason": reason,
                         "previous": previous, "new": new, "ts": round(time.time(), 3)}
        if transfer_id:
            payload["transfer_id"] = transfer_id
        if request_id:
            payload["request_id"] = request_id
        if claimed_id:
            payload["claimed_id"] = claimed_id
        if missing is not None:
            payload["missing"] = missing
        if models is not None:
            payload["models"] = models
        subject = transfer_id or request_id
        if subject and event != "missing":
            with self._answers_lock:
                self._answers[subject] = payload
                self._answers.move_to_end(subject)
                while len(self._answers) > REMEMBERED_IDS:
                    self._answers.popitem(last=False)
        self.publisher.publish(self.events_topic, json.dumps(payload, separators=(",", ":")), qos=1)
        if not log:
            return
        subject = subject or "request"
        if event == "rejected":
            logger.warning("model update %s rejected: %s", subject, clip(reason, 300))
        elif event in ("activated", "rolled_back"):
            logger.info("model update %s: pipeline %s %s %s %s (was %s %s)%s", subject, pipeline, event.replace("_", " "),
                        (new or {}).get("name"), (new or {}).get("version"), (previous or {}).get("name"),
                        (previous or {}).get("version"), f": {reason}" if reason else "")
        else:
            logger.debug("model update %s: %s %s", subject, event, reason)


__all__ = ["FINAL_EVENTS", "ModelUpdates"]
