"""The board's side of `edge-agent push` and `edge-agent models rollback`: the MQTT conversation.

Requests arrive on `{prefix}/{device}/models/...` (edge_agent.delivery.update_protocol) through the
agent's one MQTT client; paho's thread only puts them on a queue. One worker thread takes them
in order, reassembles transfers (models.transfer), answers every request with an event, expires
idle transfers and judges probation. A complete transfer is installed (service.model_install) on
a job thread, one at a time, so a second push that arrives meanwhile is refused at once
("busy with transfer X").
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable

from edge_agent.delivery.transfer import Transfer, TransferError, remove_leftovers
from edge_agent.delivery.update_protocol import (
    ProtocolError,
    PushBegin,
    is_valid_id,
    models_base,
    parse_begin,
    parse_json_object,
    parse_models_topic,
)
from edge_agent.service.model_install import ModelInstaller, PipelineHost, failure_reason
from edge_agent.service.probation import probation_failure, stall_limit_s

logger = logging.getLogger(__name__)

POLL_S = 0.2
STOP_JOIN_S = 5.0
REMEMBERED_IDS = 256  # finished or refused transfers whose late chunks and resends are ignored
MAX_MISSING_LISTED = 1000


class ModelUpdates:
    """Receives pushes and rollback requests for every pipeline of one agent."""

    def __init__(self, host: PipelineHost, publisher, watchdog_timeout_s: float):
        config = host.config
        self.host = host
        self.publisher = publisher  # MqttPublisher: publish() and subscribe()
        self.settings = config.models
        self.watchdog_timeout_s = watchdog_timeout_s  # 0: systemd's watchdog is off
        self.base = models_base(config.mqtt.topic_prefix, config.device_id)
        self.events_topic = f"{self.base}/events"
        self.incoming = Path(config.state_dir) / "incoming"
        self._inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._stop = threading.Event()
        self.installer = ModelInstaller(host, self._stop)
        self._transfer: Transfer | None = None
        self._transfer_pipeline = ""
        self._job: threading.Thread | None = None
        self._job_label = ""
        self._done_ids: deque[str] = deque(maxlen=REMEMBERED_IDS)
        self._worker = threading.Thread(target=self._run, name="model-updates", daemon=True)

    # --- life cycle ----------------------------------------------------------------
    def start(self) -> None:
        removed = remove_leftovers(self.incoming)
        if removed:
            logger.info("removed %d unfinished model transfer(s) from %s", removed, self.incoming)
        self.publisher.subscribe(f"{self.base}/push/#", self._receive)
        self.publisher.subscribe(f"{self.base}/rollback", self._receive)
        self._worker.start()
        logger.info("model updates: %s on %s/#", "accepting pushes" if self.settings.enabled else "disabled "
                    "(models.enabled = false; requests are answered with rejected)", self.base)

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

    def in_probation(self, pipeline: str) -> bool:
        return pipeline in self.installer.probation

    def _receive(self, topic: str, payload: bytes) -> None:
        """On paho's network thread: hand over, nothing else."""
        self._inbox.put((topic, payload))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                topic, payload = self._inbox.get(timeout=POLL_S)
            except queue.Empty:
                pass
            else:
                try:
                    self._handle(topic, payload)
                except Exception:  # the edge of the loop: one bad request must not end the updater
                    logger.exception("model request on %s failed", topic)
            try:
                self._expire_transfer()
                self._watch_probation()
            except Exception:
                logger.exception("model updates: watching transfers and probation failed")

    # --- requests ------------------------------------------------------------------
    def _handle(self, topic: str, payload: bytes) -> None:
        try:
            request = parse_models_topic(topic, self.base)
        except ProtocolError as err:
            self._event("rejected", reason=str(err))
            return
        if request.kind == "chunk":
            self._chunk(request.transfer_id, request.index, payload)
        elif request.kind == "begin":
            self._begin(request.transfer_id, payload)
        elif request.kind == "end":
            self._end(request.transfer_id, payload)
        elif request.kind == "abort":
            self._abort(request.transfer_id, payload)
        else:
            self._rollback_request(payload)

    def _refusal(self) -> str:
        """Why no new push or rollback can start now ("" when one can)."""
        if not self.settings.enabled:
            return "model updates are disabled on this device (models.enabled = false)"
        if self._transfer is not None:
            return f"busy with transfer {self._transfer.transfer_id}: try again when it has finished"
        if self._job is not None and self._job.is_alive():
            return f"busy with {self._job_label}: try again when it has finished"
        return ""

    def _begin(self, transfer_id: str, payload: bytes) -> None:
        if transfer_id in self._done_ids:
            return  # a resent begin of a push that is already over
        if self._transfer is not None and self._transfer.transfer_id == transfer_id:
            self._transfer.touch()
            self._event("accepted", transfer_id=transfer_id, pipeline=self._transfer_pipeline)
            return
        try:
            begin = parse_begin(payload, transfer_id)
            pipeline = self._resolve_pipeline(begin.pipeline)
        except ProtocolError as err:
            self._refuse(transfer_id, "", str(err))
            return
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
        self._transfer_pipeline = pipeline
        logger.info("model transfer %s for pipeline %s: %d bytes in %d chunks", transfer_id, pipeline, begin.size, begin.chunks)
        self._event("accepted", transfer_id=transfer_id, pipeline=pipeline)

    def _already_active(self, begin: PushBegin, pipeline: str) -> bool:
        """A push of the bundle that is already active succeeds without a transfer."""
        active = self.installer.already_active(pipeline, begin.sha256)
        if active is None:
            return False
        self._done_ids.append(begin.transfer_id)
        self._event("activated", transfer_id=begin.transfer_id, pipeline=pipeline, reason="already active",
                    previous=active.describe(), new=active.describe())
        return True

    def _chunk(self, transfer_id: str, index: int, payload: bytes) -> None:
        transfer = self._transfer
        if transfer is None or transfer.transfer_id != transfer_id:
            if transfer_id not in self._done_ids:
                logger.debug("chunk %d of unknown transfer %s ignored", index, transfer_id)
            return
        try:
            transfer.write_chunk(index, payload)
        except TransferError as err:
            self._fail_transfer(str(err))

    def _end(self, transfer_id: str, payload: bytes) -> None:
        transfer = self._transfer
        if transfer is None or transfer.transfer_id != transfer_id:
            if transfer_id not in self._done_ids:
                self._refuse(transfer_id, "", f"unknown transfer {transfer_id}: its begin never arrived or it expired; push again")
            return
        try:
            parse_json_object(payload, "end")
        except ProtocolError as err:
            self._fail_transfer(str(err))
            return
        missing = transfer.missing()
        if missing:
            transfer.touch()
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
        label = transfer.begin.name or f"the bundle of transfer {transfer_id}"
        self._transfer = None
        self._done_ids.append(transfer_id)
        self._event("received", transfer_id=transfer_id, pipeline=pipeline)
        self._start_job(f"installing transfer {transfer_id}", lambda: self._install(transfer_id, pipeline, path, label))

    def _abort(self, transfer_id: str, payload: bytes) -> None:
        """The pusher gave up (timeout, Ctrl-C, a broker refusing its chunks): free the board at once."""
        if self._transfer is None or self._transfer.transfer_id != transfer_id:
            return
        try:
            reason = str(parse_json_object(payload, "abort").get("reason") or "no reason given")
        except ProtocolError as err:
            reason = str(err)
        self._fail_transfer(f"aborted by the pusher: {reason}")

    def _rollback_request(self, payload: bytes) -> None:
        try:
            data = parse_json_object(payload, "rollback")
        except ProtocolError as err:
            self._event("rejected", reason=str(err))
            return
        request_id = data.get("request_id")
        if not isinstance(request_id, str) or not is_valid_id(request_id):
            self._event("rejected", reason="rollback: request_id must be 1-64 letters, digits, '.', '_' or '-'")
            return
        try:
            pipeline = self._resolve_pipeline(data.get("pipeline") or "")
        except ProtocolError as err:
            self._event("rejected", request_id=request_id, reason=str(err))
            return
        refusal = self._refusal()
        if refusal:
            self._event("rejected", request_id=request_id, pipeline=pipeline, reason=refusal)
            return
        self._start_job(f"rollback {request_id}",
                        lambda: self._guarded_rollback(pipeline, request_id=request_id, reason="requested"))

    def _resolve_pipeline(self, requested: str) -> str:
        names = [p.name for p in self.host.config.pipelines]
        if not isinstance(requested, str):
            raise ProtocolError(f"pipeline must be a string, got {requested!r}")
        if requested:
            if requested not in names:
                raise ProtocolError(f"this device has no pipeline {requested!r} (it runs {', '.join(names)})")
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
                                "(models.transfer_timeout_s); push again")

    def _start_job(self, label: str, work: Callable[[], None]) -> None:
        self._job_label = label
        self._job = threading.Thread(target=work, name="model-install", daemon=True)
        self._job.start()

    # --- model changes -------------------------------------------------------------
    def _install(self, transfer_id: str, pipeline: str, path: Path, label: str) -> None:
        """On the job thread: install and report; every failure is a `rejected` event."""
        def verified(new: dict, note: str) -> None:
            self._event("verified", transfer_id=transfer_id, pipeline=pipeline, new=new, reason=note)

        try:
            previous, entry = self.installer.install(pipeline, path, label, transfer_id, verified)
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
               previous: dict | None = None, new: dict | None = None, missing: list[int] | None = None) -> None:
        """Publish one event (QoS 1) and log it once."""
        payload: dict = {"device": self.host.config.device_id, "pipeline": pipeline, "event": event, "reason": reason,
                         "previous": previous, "new": new, "ts": round(time.time(), 3)}
        if transfer_id:
            payload["transfer_id"] = transfer_id
        if request_id:
            payload["request_id"] = request_id
        if missing is not None:
            payload["missing"] = missing
        self.publisher.publish(self.events_topic, json.dumps(payload, separators=(",", ":")), qos=1)
        subject = transfer_id or request_id or "request"
        if event == "rejected":
            logger.warning("model update %s rejected: %s", subject, reason)
        elif event in ("activated", "rolled_back"):
            logger.info("model update %s: pipeline %s %s %s %s (was %s %s)%s", subject, pipeline, event.replace("_", " "),
                        (new or {}).get("name"), (new or {}).get("version"), (previous or {}).get("name"),
                        (previous or {}).get("version"), f": {reason}" if reason else "")
        else:
            logger.debug("model update %s: %s %s", subject, event, reason)
