"""What the agent builds its pipelines from: the sinks, made once at start, and each pipeline's model.

The sinks are made for the pipelines of the config the agent started with and shared by them (a
sink a reload asks for takes a restart). A pipeline's model is the model store's active one (a
pushed model) while the config still names the model the store's history began with; otherwise,
or when that model cannot be used, the config's. Every model is checked in a child process first
(service.model_guard), then built from the very bytes checked.

The agent's config is passed to every call: a reload replaces it, and the next pipeline built
must see the new one.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

from edge_agent.config import DEFAULT_THRESHOLD, AgentConfig, PipelineConfig
from edge_agent.delivery.store import StoredModel, StoreError, pipeline_store
from edge_agent.interpret import Interpreter, interpreter_for
from edge_agent.interpret.stage import TRACKED_TASKS, restore_state
from edge_agent.service.active_model import ActiveModel, build_active_model
from edge_agent.service.model_guard import ModelGuard
from edge_agent.service.pipeline import Pipeline
from edge_agent.service.views import AgentViews
from edge_agent.sinks import Sink

if TYPE_CHECKING:
    from edge_agent.mqtt.publisher import MqttPublisher

logger = logging.getLogger(__name__)


class PipelineFactory:
    """Makes the agent's sinks once, then any pipeline of its config (at start, on a reload, on a push)."""

    def __init__(self, model_guard: ModelGuard, views: AgentViews):
        self.model_guard = model_guard  # every model is loaded in the self-test child first
        self.views = views
        self.mqtt: MqttPublisher | None = None  # when a pipeline publishes to MQTT and mqtt.enabled
        self.sinks: dict[str, Sink] = {}

    def make_sinks(self, agent: AgentConfig) -> None:
        """The sinks the config's pipelines use; InputError when one cannot be set up (a password file...)."""
        used = {sink for pipeline in agent.pipelines for sink in pipeline.sinks}
        if "mqtt" in used and agent.mqtt.enabled:
            from edge_agent.mqtt.publisher import MqttPublisher
            from edge_agent.sinks.mqtt import MqttSink

            spool = agent.spool
            self.mqtt = MqttPublisher(agent.mqtt, agent.device_id, clean_session=not spool.enabled)
            if spool.enabled:
                from edge_agent.mqtt.spool_sender import SpoolSender

                path = Path(agent.state_dir) / "spool" / "spool.db"
                try:
                    self.mqtt.attach_spool(SpoolSender(self.mqtt, path, int(spool.max_mb * 1024 * 1024), spool.policy))
                except (OSError, sqlite3.Error) as err:
                    # keep publishing (from memory) rather than refuse to run
                    logger.error("spool %s cannot be used (%s): predictions made while the broker is away "
                                 "are kept in memory only; fix state_dir or its permissions", path, err)
            self.sinks["mqtt"] = MqttSink(self.mqtt)
        if "serial" in used and agent.serial is not None:
            from edge_agent.sinks.serial import SerialSink

            self.sinks["serial"] = SerialSink(agent.serial)
        if "stdout" in used:
            from edge_agent.sinks.stdout import StdoutSink

            self.sinks["stdout"] = StdoutSink()

    def make_pipeline(self, agent: AgentConfig, config: PipelineConfig, last_seq: int | None = None,
                      active: ActiveModel | None = None) -> Pipeline:
        """A new, not yet started pipeline; `active` when its model is built already, `last_seq` to go
        on numbering from (by default where the spool says the pipeline got to)."""
        if active is None:
            active = self.build_model(agent, config)
        logger.info(
            "pipeline %s: model %s (%s, sha256 %s…) on %s, delegate %s, %d threads",
            config.name, active.ref.name, active.task, active.ref.sha256[:12],
            active.model.runtime, active.model.delegate, active.model.num_threads,
        )
        sinks = [self.sinks[name] for name in config.sinks if name in self.sinks]
        missing = [name for name in config.sinks if name not in self.sinks]
        if missing:  # sinks are made at start for the pipelines of that config (or mqtt.enabled = false)
            logger.warning("pipeline %s: sink(s) %s not running (not in use when the agent started, or disabled); "
                           "restart the agent to add them", config.name, ", ".join(missing))
        spool = self.mqtt.spool if self.mqtt is not None else None
        if last_seq is None:
            last_seq = spool.last_seq(config.name) if spool is not None else 0  # numbering survives restarts
        messages = self.mqtt if "mqtt" in self.sinks and "mqtt" in config.sinks else None
        interprets = (config.events.enabled and active.task in ("classification", *TRACKED_TASKS)) or \
            config.publish.predictions != "every_frame"
        pipeline = Pipeline(config, agent.device_id, active, sinks, last_seq=last_seq,
                            interpreter_factory=self._interpreter if interprets else None, messages=messages,
                            saved_state=messages.saved_state(config.name) if messages is not None else None,
                            view=self.views.tap_for(config))
        logger.info("pipeline %s: stages on %s", config.name, pipeline.runner.description)
        return pipeline

    def _interpreter(self, config: PipelineConfig, active: ActiveModel, saved: dict[str, str] | None) -> Interpreter:
        """The interpret stage of a pipeline (edge_agent.interpret), going on from the spool's saved state."""
        state = restore_state(saved) if saved else None
        if saved and not state:
            logger.warning("pipeline %s: the saved event state is unreadable; starting afresh", config.name)
        return interpreter_for(config, active.task, active.labels, DEFAULT_THRESHOLD.get(active.task, 0.0), state)

    # --- the model ------------------------------------------------------------------
    def build_model(self, agent: AgentConfig, config: PipelineConfig) -> ActiveModel:
        """The model store's active model (a pushed one) while the config still names the model the
        store's history began with; otherwise, or when that model cannot be used, the config's."""
        stored = self._stored_model(agent, config)
        if stored is not None:
            entry, path = stored
            try:
                active = self._load_model(agent, config, path)
                logger.info("pipeline %s: using %s %s from the model store (pushed as %s); the config names %s",
                            config.name, entry.name, entry.version, entry.origin, config.model)
                return active
            except Exception as err:  # a stored model that no longer loads must not keep the pipeline down
                logger.error("pipeline %s: the model store's active model %s cannot be used (%s); using the config's model",
                             config.name, path, err)
        return self._load_model(agent, config, config.model)

    def model_path(self, agent: AgentConfig, config: PipelineConfig) -> str:
        """The file build_model tries first."""
        stored = self._stored_model(agent, config, quiet=True)
        return config.model if stored is None else stored[1]

    def _load_model(self, agent: AgentConfig, config: PipelineConfig, path: str) -> ActiveModel:
        """Where the agent loads every model: checked in a child first, then built from the very bytes checked."""
        opened = self.model_guard.checked_model(agent, config, path)
        return build_active_model(config, opened=opened)

    def _stored_model(self, agent: AgentConfig, config: PipelineConfig,
                      quiet: bool = False) -> tuple[StoredModel, str] | None:
        """The store's active model and its path, while the config still names the model its history began with."""
        store = pipeline_store(agent.state_dir, config.name, agent.models.keep)
        try:
            stored = store.active_for(config.model)
        except StoreError as err:
            if not quiet:
                logger.error("pipeline %s: %s; using the config's model", config.name, err)
            return None
        return None if stored is None else (stored, str(store.path(stored)))
