"""Turn a received bundle into the model a pipeline serves, and go back to the previous one.

No MQTT here (service.model_updates talks to the pusher); every step raises with the reason
the pusher should read, and nothing changes until the last step succeeded:

  verify    signature first, then the model read with a hard cap at models.max_mb and its
            SHA-256 checked (model_source's trust rule; an unsigned bundle only with an explicit
            allow_unsigned_models = true), decrypted in memory when encrypted for this board
  version   not older than the pipeline's active version unless the signed begin allows a
            downgrade (edge_agent.delivery.versions)
  self-test in a child process (service.selftest), fed the plain model through a pipe: a model
            that crashes the runtime kills only the child
  fit       the task must be the one the pipeline already publishes
  build     the new ActiveModel beside the running one (load, allocate, warm up)
  record    into the model store (active.json replaced atomically), then swapped between two frames
  probation registered here, judged by service.model_changes (service.probation)

One change at a time: installs and rollbacks (requested or automatic) take the same lock.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Protocol

from edge_agent.config import AgentConfig, PipelineConfig
from edge_agent.delivery.store import ModelStore, StoredModel, StoreError, pipeline_store, utc_now
from edge_agent.delivery.transfer import disk_problem
from edge_agent.records import ModelRef
from edge_agent.errors import InputError
from edge_agent.service.active_model import ActiveModel, build_active_model
from edge_agent.service.model_source import OpenedModel, open_model
from edge_agent.service.probation import Probation, ProbationList
from edge_agent.service.selftest import SelfTestError, selftest_in_child

if TYPE_CHECKING:
    from edge_agent.service.pipeline import Pipeline

logger = logging.getLogger(__name__)

EXPECTED_ERRORS = (SelfTestError, StoreError, OSError, ValueError, RuntimeError, InputError)  # else a bug: logged


class DowngradeError(InputError):
    """The bundle's version is older than the one the pipeline runs, and the request did not allow that."""


class PipelineHost(Protocol):
    """What installing needs from the agent."""

    config: AgentConfig

    @property
    def pipelines(self) -> Mapping[str, Pipeline]: ...  # a snapshot, safe to read from any thread

    def install_model(self, name: str, active: ActiveModel, restart: bool = False) -> None: ...


class ModelInstaller:
    """Installs bundles into pipelines and rolls them back; holds the pipelines on probation."""

    def __init__(self, host: PipelineHost, stop: threading.Event):
        self.host = host
        self.settings = host.config.models
        self.probation = ProbationList()
        self._stop = stop
        self._changes = threading.Lock()

    def install(self, pipeline: str, path: Path, label: str, transfer_id: str,
                verified: Callable[[dict, str], None], allow_downgrade: bool = False) -> tuple[dict | None, StoredModel]:
        """Install the bundle at `path`; (the model served before, the stored entry of the new one).
        `verified(new_model, note)` is called once the self-test has passed."""
        config = self.pipeline_config(pipeline)
        settings = self.host.config
        opened = self._verify(path, label)
        note = self._check_version(pipeline, opened, allow_downgrade)
        report = selftest_in_child(settings, config.name, opened, label, self.settings.selftest_timeout_s, self._stop)
        self._check_fit(pipeline, report)
        verified({"name": report["name"], "version": report["version"], "sha256": report["sha256"]},
                 f"self-test passed in {report['seconds']:.1f} s{note}")
        with self._changes:
            active = build_active_model(config, opened=opened, label=label)
            previous = self.running_ref(pipeline)
            entry = self._record(pipeline, config, path, active.ref, transfer_id)
            self.host.install_model(pipeline, active)
            if self.settings.probation_s > 0:
                self.probation.start(Probation(pipeline, transfer_id, entry, time.monotonic() + self.settings.probation_s))
        return previous, entry

    def rollback(self, pipeline: str, expect_file: str = "", restart: bool = False) -> tuple[StoredModel, StoredModel]:
        """Serve the previous model in the store again; (the model given up, the model restored)."""
        config = self.pipeline_config(pipeline)
        store = self.store(pipeline)
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
                                                allow_unsigned_models=self.host.config.allow_unsigned_models,
                                                device_key=self.settings.device_key)
            given_up, restored = store.rollback()
            self.host.install_model(pipeline, restored_model, restart=restart)
            self.probation.end(pipeline)
        return given_up, restored

    def already_active(self, pipeline: str, bundle_sha256: str) -> StoredModel | None:
        """The store's active model when it is this very bundle."""
        try:
            active = self.store(pipeline).active_for(self.pipeline_config(pipeline).model)
        except StoreError:
            return None  # an install reports the damaged record
        return active if active is not None and active.file.startswith(bundle_sha256) else None

    def store(self, pipeline: str) -> ModelStore:
        return pipeline_store(self.host.config.state_dir, pipeline, self.settings.keep)

    def pipeline_config(self, name: str) -> PipelineConfig:
        return next(p for p in self.host.config.pipelines if p.name == name)

    def running_ref(self, pipeline: str) -> dict | None:
        """The model the pipeline serves now, as events report it (None when it is not running)."""
        running = self.host.pipelines.get(pipeline) if pipeline else None
        if running is None:
            return None
        ref = running.active.ref
        return {"name": ref.name, "version": ref.version, "sha256": ref.sha256}

    def _verify(self, path: Path, label: str) -> OpenedModel:
        """Trust (before anything is inflated), then integrity within models.max_mb; the model in memory."""
        from edge_agent.delivery.bundle import BundleError, is_bundle_file

        if not is_bundle_file(path):
            raise BundleError(f"{label} is not a model bundle: make one with "
                              "`edge-agent bundle create MODEL.tflite --key NAME.key -o MODEL.eab`")
        config = self.host.config
        return open_model(str(path), config.trusted_keys, config.allow_unsigned_pushes, label,
                          self.settings.device_key, int(self.settings.max_mb * 1024 * 1024))

    def _check_version(self, pipeline: str, opened: OpenedModel, allow_downgrade: bool) -> str:
        """Refuse a version older than the active one unless the signed begin allows it; a note for the event."""
        from edge_agent.delivery.versions import downgrade_problem

        running = self.running_ref(pipeline)
        if running is not None:
            active = running["version"]
        else:  # a pipeline that is down: the version its store says is active
            try:
                stored = self.store(pipeline).active_for(self.pipeline_config(pipeline).model)
            except StoreError:
                stored = None
            active = stored.version if stored is not None else ""
        new = opened.manifest.version if opened.manifest is not None else ""
        problem = downgrade_problem(active, new)
        if problem and not allow_downgrade:
            raise DowngradeError(problem)
        return f"; downgrade from {active} allowed by the request" if problem else ""

    def _check_fit(self, pipeline: str, report: dict) -> None:
        running = self.host.pipelines.get(pipeline)
        if running is not None and report["task"] != running.active.task:
            old = running.active.task
            raise SelfTestError(f"the model's task is {report['task']}, but pipeline {pipeline} publishes {old} "
                                f"predictions: push a {old} model, or change the pipeline's task in the config first")

    def _record(self, pipeline: str, config: PipelineConfig, path: Path, ref: ModelRef, transfer_id: str) -> StoredModel:
        """Move the bundle into the store and make it active (keeping the config's model as rollback target)."""
        store = self.store(pipeline)
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
        from edge_agent.delivery.bundle import is_bundle_file, read_bundle
        from edge_agent.runtime.tflite_file import read_model_file

        if is_bundle_file(config.model):
            manifest = read_bundle(config.model).manifest
            return ModelRef(manifest.name, manifest.model_sha256, manifest.version)
        model_file = read_model_file(config.model)
        return ModelRef(model_file.name, model_file.sha256, "")


def failure_reason(err: Exception, state_dir: str) -> str:
    """What to tell the pusher about an install or rollback that raised."""
    if not isinstance(err, EXPECTED_ERRORS):
        logger.error("unexpected failure while changing a model", exc_info=err)
    if isinstance(err, OSError):
        return disk_problem(err, Path(err.filename or state_dir))
    return str(err) or type(err).__name__
