"""The model changes a board's updater makes: installs and rollbacks on a job thread, probation judged.

A complete transfer is installed (service.model_install) on a job thread, and a rollback (requested,
or automatic when a new model fails its probation) runs there too: one job at a time, so a push or
rollback that arrives meanwhile is refused at once with what the board is busy with. Every outcome
is an event (service.update_answers); a failure is `rejected` and the old model keeps serving.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Callable

from edge_agent.delivery.request_limits import clip
from edge_agent.delivery.update_protocol import ProtocolError
from edge_agent.service.model_install import ModelInstaller, PipelineHost, failure_reason
from edge_agent.service.probation import probation_failure, stall_limit_s
from edge_agent.service.update_answers import UpdateAnswers

logger = logging.getLogger(__name__)


class ModelChanges:
    """Runs installs and rollbacks for every pipeline of one agent, one at a time, and judges probation."""

    def __init__(self, host: PipelineHost, installer: ModelInstaller, answers: UpdateAnswers,
                 watchdog_timeout_s: float):
        self.host = host
        self.installer = installer
        self.answers = answers
        self.settings = host.config.models
        self.watchdog_timeout_s = watchdog_timeout_s  # 0: systemd's watchdog is off
        self._job: threading.Thread | None = None
        self._job_label = ""

    # --- the job thread ------------------------------------------------------------
    def busy_with(self) -> str:
        """What the running job does ("" when none runs)."""
        if self._job is not None and self._job.is_alive():
            return self._job_label
        return ""

    def start(self, label: str, work: Callable[[], None]) -> None:
        self._job_label = label
        self._job = threading.Thread(target=work, name="model-install", daemon=True)
        self._job.start()

    def join(self, timeout_s: float) -> None:
        job = self._job
        if job is not None:
            job.join(timeout_s)

    def resolve_pipeline(self, requested: object) -> str:
        """The pipeline a push or rollback changes: the one it names, or this device's only one."""
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

    # --- model changes -------------------------------------------------------------
    def install(self, transfer_id: str, pipeline: str, path: Path, label: str, allow_downgrade: bool) -> None:
        """On the job thread: install and report; every failure is a `rejected` event."""
        def verified(new: dict, note: str) -> None:
            self.answers.event("verified", transfer_id=transfer_id, pipeline=pipeline, new=new, reason=note)

        try:
            previous, entry = self.installer.install(pipeline, path, label, transfer_id, verified, allow_downgrade)
        except Exception as err:  # the edge of the job: report it, the old model keeps serving
            self.answers.event("rejected", transfer_id=transfer_id, pipeline=pipeline,
                               reason=failure_reason(err, self.host.config.state_dir),
                               previous=self.installer.running_ref(pipeline))
            return
        finally:
            path.unlink(missing_ok=True)  # gone already when it moved into the store
        self.answers.event("activated", transfer_id=transfer_id, pipeline=pipeline, previous=previous,
                           new=entry.describe())

    def rollback(self, pipeline: str, request_id: str = "", transfer_id: str = "", reason: str = "",
                 expect_file: str = "", restart: bool = False) -> bool:
        """Roll back and report it; a failure is reported as `rejected`. True when rolled back."""
        try:
            given_up, restored = self.installer.rollback(pipeline, expect_file, restart)
        except Exception as err:  # the edge of a request: report it, keep serving
            self.answers.event("rejected", transfer_id=transfer_id, request_id=request_id, pipeline=pipeline,
                               reason=f"rollback failed: {failure_reason(err, self.host.config.state_dir)}")
            return False
        self.answers.event("rolled_back", transfer_id=transfer_id, request_id=request_id, pipeline=pipeline,
                           reason=reason, previous=given_up.describe(), new=restored.describe())
        return True

    def watch_probation(self) -> None:
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
                self.rollback(name, transfer_id=probation.transfer_id, reason=reason,
                              expect_file=probation.model.file, restart=True)
                probations.end(name, only=probation)
            elif probation.over(now):
                probations.end(name, only=probation)
                logger.info("pipeline %s: model %s %s passed its probation (%g s)", name, probation.model.name,
                            probation.model.version, self.settings.probation_s)
