"""The board's side of `edge-agent push` and `edge-agent models rollback`.

Requests arrive on `{prefix}/{device}/models/...` (edge_agent.models.update_protocol) through the
agent's one MQTT client; paho's thread only puts them on a queue. One worker thread takes them
in order, reassembles transfers, answers every request with an event, expires idle transfers
and watches probation. A complete transfer is installed on a job thread, one at a time, so a
second push that arrives meanwhile is refused at once ("busy with transfer X"):

  verify    integrity and signature (model_source's trust rule; an unsigned bundle only with an
            explicit allow_unsigned_models = true)
  self-test in a child process (service.selftest): a model that crashes the runtime kills only it
  fit       the task must be the one the pipeline already publishes
  build     the new ActiveModel beside the running one (load, allocate, warm up)
  record    the store's active.json (atomic rename), then the swap between two frames
  watch     probation: a failure within probation_s rolls the model back (service.probation)
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable, Protocol

from edge_agent.config import AgentConfig, PipelineConfig
from edge_agent.models.store import ModelStore, StoredModel, StoreError, pipeline_store, utc_now
from edge_agent.models.transfer import Transfer, TransferError, remove_leftovers
from edge_agent.models.update_protocol import (
    ProtocolError,
    PushBegin,
    is_valid_id,
    models_base,
    parse_begin,
    parse_json_object,
    parse_models_topic,
)
from edge_agent.records import ModelRef
from edge_agent.service.active_model import ActiveModel, build_active_model
from edge_agent.service.probation import Probation, probation_failure
from edge_agent.service.selftest import SelfTestError, selftest_in_child

logger = logging.getLogger(__name__)

POLL_S = 0.2
STOP_JOIN_S = 5.0
REMEMBERED_IDS = 256  # finished or refused transfers whose late chunks and resends are ignored
MAX_MISSING_LISTED = 1000


class PipelineHost(Protocol):
    """What the updater needs from the agent."""

    config: AgentConfig
    pipelines: dict

    def install_model(self, name: str, active: ActiveModel, restart: bool = False) -> None: ...


class ModelUpdates:
    """Receives pushes and rollback requests for every pipeline of one agent."""

    def __init__(self, host: PipelineHost, publisher, stall_limit_s: float):
        config = host.config
        self.host = host
        self.publisher = publisher  # MqttPublisher: publish() and subscribe()
        self.settings = config.models
        self.stall_limit_s = stall_limit_s
        self.base = models_base(config.mqtt.topic_prefix, config.device_id)
        self.events_topic = f"{self.base}/events"
        self.incoming = Path(config.state_dir) / "incoming"
        self._inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._stop = threading.Event()
        self._changes = threading.Lock()  # one model change (install or rollback) at a time
        self._transfer: Transfer | None = None
        self._transfer_pipeline = ""
        self._job: threading.Thread | None = None
        self._job_label = ""
        self._probation: dict[str, Probation] = {}
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
        return pipeline in self._probation

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
        active = self._store(pipeline).active_for(self._pipeline_config(pipeline).model)
        if active is None or not active.file.startswith(begin.sha256):
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
        self._transfer = None
        self._done_ids.append(transfer_id)
        self._event("received", transfer_id=transfer_id, pipeline=pipeline)
        self._start_job(f"installing transfer {transfer_id}", lambda: self._install(transfer_id, pipeline, path))

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
        self._event("rejected", transfer_id=transfer_id, pipeline=pipeline, reason=reason)

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

    # --- install -------------------------------------------------------------------
    def _install(self, transfer_id: str, pipeline: str, path: Path) -> None:
        """Verify, self-test, build, record, swap; every failure is a `rejected` event."""
        config = self._pipeline_config(pipeline)
        settings = self.host.config
        try:
            self._verify(path)
            report = selftest_in_child(config, str(path), settings.trusted_keys, settings.allow_unsigned_pushes,
                                       self.settings.selftest_timeout_s, self._stop)
            self._check_fit(pipeline, report)
            new = {"name": report["name"], "version": report["version"], "sha256": report["sha256"]}
            self._event("verified", transfer_id=transfer_id, pipeline=pipeline, new=new,
                        reason=f"self-test passed in {report['seconds']:.1f} s")
            with self._changes:
                active = build_active_model(config, model_path=str(path), trusted_keys=settings.trusted_keys,
                                            allow_unsigned_models=settings.allow_unsigned_pushes)
                previous = self._running_ref(pipeline)
                entry = self._record(pipeline, config, path, active.ref, transfer_id)
                self.host.install_model(pipeline, active)
                if self.settings.probation_s > 0:
                    self._probation[pipeline] = Probation(pipeline, transfer_id, entry,
                                                          time.monotonic() + self.settings.probation_s)
            self._event("activated", transfer_id=transfer_id, pipeline=pipeline, previous=previous, new=entry.describe())
        except Exception as err:  # the edge of the job: every failure is reported, the old model keeps serving
            if not isinstance(err, (SelfTestError, StoreError, OSError, ValueError, RuntimeError)):
                logger.exception("installing transfer %s failed", transfer_id)
            self._event("rejected", transfer_id=transfer_id, pipeline=pipeline, reason=str(err) or type(err).__name__)
        finally:
            path.unlink(missing_ok=True)  # gone already when it moved into the store

    def _verify(self, path: Path) -> None:
        """Integrity and trust; raises with the reason (checked again by the self-test child)."""
        from edge_agent.models.bundle import BundleError, is_bundle_file
        from edge_agent.service.model_source import open_model

        if not is_bundle_file(path):
            raise BundleError("the pushed file is not a model bundle: make one with "
                              "`edge-agent bundle create MODEL.tflite --key NAME.key -o MODEL.eab`")
        config = self.host.config
        open_model(str(path), config.trusted_keys, config.allow_unsigned_pushes)

    def _check_fit(self, pipeline: str, report: dict) -> None:
        running = self.host.pipelines.get(pipeline)
        if running is not None and report["task"] != running.active.task:
            old = running.active.task
            raise SelfTestError(f"the model's task is {report['task']}, but pipeline {pipeline} publishes {old} "
                                f"predictions: push a {old} model, or change the pipeline's task in the config first")

    def _record(self, pipeline: str, config: PipelineConfig, path: Path, ref: ModelRef, transfer_id: str) -> StoredModel:
        """Move the bundle into the store and make it active (keeping the config's model as rollback target)."""
        store = self._store(pipeline)
        if store.active_for(config.model) is None:
            base = self._describe_config_model(pipeline, config)
            store.begin_history(config.model, StoredModel(store.add_bytes(Path(config.model).read_bytes()),
                                                          base.sha256, base.name, base.version, utc_now(), "config"))
        entry = StoredModel(store.add_file(path), ref.sha256, ref.name, ref.version, utc_now(), transfer_id)
        store.activate(entry, config.model)
        return entry

    def _describe_config_model(self, pipeline: str, config: PipelineConfig) -> ModelRef:
        running = self.host.pipelines.get(pipeline)
        if running is not None:
            return running.active.ref
        from edge_agent.models.bundle import is_bundle_file, read_bundle
        from edge_agent.runtime.tflite_file import read_model_file

        if is_bundle_file(config.model):
            manifest = read_bundle(config.model).manifest
            return ModelRef(manifest.name, manifest.model_sha256, manifest.version)
        model_file = read_model_file(config.model)
        return ModelRef(model_file.name, model_file.sha256, "")

    # --- rollback and probation ----------------------------------------------------
    def _guarded_rollback(self, pipeline: str, request_id: str = "", transfer_id: str = "", reason: str = "",
                          expect_file: str = "", restart: bool = False) -> bool:
        """Roll back and report it; a failure is reported as `rejected`. True when rolled back."""
        try:
            given_up, restored = self._rollback(pipeline, expect_file, restart)
        except Exception as err:  # the edge of a request: report it, keep serving
            if not isinstance(err, (StoreError, OSError, ValueError, RuntimeError)):
                logger.exception("rollback of pipeline %s failed", pipeline)
            self._event("rejected", transfer_id=transfer_id, request_id=request_id, pipeline=pipeline,
                        reason=f"rollback failed: {err}")
            return False
        self._event("rolled_back", transfer_id=transfer_id, request_id=request_id, pipeline=pipeline, reason=reason,
                    previous=given_up.describe(), new=restored.describe())
        return True

    def _rollback(self, pipeline: str, expect_file: str, restart: bool) -> tuple[StoredModel, StoredModel]:
        config = self._pipeline_config(pipeline)
        store = self._store(pipeline)
        with self._changes:
            active = store.active_for(config.model)
            history = store.history()
            if active is None or len(history) < 2:
                raise StoreError(f"nothing to roll back to: pipeline {pipeline} runs the model its config names and "
                                 "no earlier model is in its store")
            if expect_file and active.file != expect_file:
                raise StoreError(f"the active model changed meanwhile (now {active.name} {active.version})")
            restored_model = build_active_model(config, model_path=str(store.path(history[1])),
                                                trusted_keys=self.host.config.trusted_keys,
                                                allow_unsigned_models=self.host.config.allow_unsigned_models)
            given_up, restored = store.rollback()
            self.host.install_model(pipeline, restored_model, restart=restart)
            self._probation.pop(pipeline, None)
        return given_up, restored

    def _watch_probation(self) -> None:
        now = time.monotonic()
        for name, probation in list(self._probation.items()):
            pipeline = self.host.pipelines.get(name)
            if pipeline is None or pipeline.status == "stopped":
                self._probation.pop(name, None)  # removed by a reload, or its source ended: nothing to judge
                continue
            reason = probation_failure(pipeline.status, pipeline.error, now - pipeline.heartbeat_mono, self.stall_limit_s)
            if reason:
                logger.error("pipeline %s: model %s %s failed its probation: %s; rolling back", name,
                             probation.model.name, probation.model.version, reason)
                # the entry stays until the rollback is done, so the agent does not take the failed
                # pipeline for a finished one and exit meanwhile
                self._guarded_rollback(name, transfer_id=probation.transfer_id, reason=reason,
                                       expect_file=probation.model.file, restart=True)
                self._probation.pop(name, None)
            elif probation.over(now):
                self._probation.pop(name, None)
                logger.info("pipeline %s: model %s %s passed its probation (%g s)", name, probation.model.name,
                            probation.model.version, self.settings.probation_s)

    # --- helpers -------------------------------------------------------------------
    def _store(self, pipeline: str) -> ModelStore:
        return pipeline_store(self.host.config.state_dir, pipeline, self.settings.keep)

    def _pipeline_config(self, name: str) -> PipelineConfig:
        return next(p for p in self.host.config.pipelines if p.name == name)

    def _running_ref(self, pipeline: str) -> dict | None:
        running = self.host.pipelines.get(pipeline)
        if running is None:
            return None
        ref = running.active.ref
        return {"name": ref.name, "version": ref.version, "sha256": ref.sha256}

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
