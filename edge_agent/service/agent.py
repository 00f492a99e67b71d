"""The daemon: builds sinks and pipelines from the config, reports state, shuts down cleanly.

Start-up reads like a table of contents: sinks, pipelines, connect, run, stop. A pipeline
whose model or source cannot be used fails alone with a clear error in the log and in the
state topic; the agent keeps the others running. What a pipeline is built from (the sinks,
the model the store or the config names) is service.pipeline_factory's; the agent owns the set
of pipelines and changes it: at start, on a reload (SIGHUP), when a pushed model is installed.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from edge_agent import __version__
from edge_agent.config import AgentConfig, ConfigError, PipelineConfig, load_config
from edge_agent.errors import InputError
from edge_agent.service.active_model import ActiveModel
from edge_agent.service.model_guard import ModelGuard
from edge_agent.service.pipeline import Pipeline
from edge_agent.service.pipeline_factory import PipelineFactory
from edge_agent.service.process_setup import setup_process
from edge_agent.service.registry import PipelineRegistry
from edge_agent.service.reload import apply_log_level, effective_config, plan_reload
from edge_agent.service.systemd import Notifier, Watchdog
from edge_agent.service.views import AgentViews

if TYPE_CHECKING:
    from edge_agent.mqtt.publisher import MqttPublisher

logger = logging.getLogger(__name__)

POLL_S = 0.2
RESTART_JOIN_S = 2.0


class Agent:
    """Owns every pipeline and sink of one config."""

    def __init__(self, config: AgentConfig, config_path: Path | None = None, log_level_override: str | None = None):
        self.config = config
        self.log_level_override = log_level_override  # `run --log-level`: wins over the file's log_level
        self.stop_event = threading.Event()
        self.config_path = config_path
        self._reload_requested = threading.Event()
        self._wake = threading.Event()  # set by signal handlers so the main loop reacts at once
        self._state_now = threading.Event()  # a model changed: the main loop publishes the state at once
        self.started_mono = time.monotonic()
        self.registry = PipelineRegistry()
        # a reload (its own thread) and model installs (theirs) change pipelines one at a time; readers
        # (the main loop, state, probation) never take this lock: they read the registry's snapshots
        self._changes = threading.Lock()
        self._reloader: threading.Thread | None = None
        self._reload_outcome = ""  # what the finished reload tells systemd
        self._stopping = threading.Event()  # shutdown has begun (stop_event says whether it was asked for)
        self.updates = None  # ModelUpdates, when the agent has an MQTT connection
        self.discovery = None  # DiscoveryAnnouncer, when [homeassistant] is enabled
        self.views = AgentViews(self)  # snapshots, the HTTP server, metrics (service.views)
        self.model_guard = ModelGuard(self.stop_event)  # every model is loaded in a child first
        self.factory = PipelineFactory(self.model_guard, self.views)  # the sinks, and every pipeline
        self.notifier = Notifier.from_environment()
        self.watchdog = Watchdog(self.notifier)
        self._ready_sent = False

    def request_stop(self) -> None:
        self.stop_event.set()
        self._wake.set()

    @property
    def mqtt(self) -> MqttPublisher | None:
        """The MqttPublisher (predictions, state, model updates), when a pipeline publishes to MQTT."""
        return self.factory.mqtt

    @property
    def pipelines(self) -> Mapping[str, Pipeline]:
        """The running pipelines: a read-only snapshot (see service.registry)."""
        return self.registry.running()

    @property
    def failed(self) -> Mapping[str, str]:
        """Pipelines that could not start, with the reason (a snapshot)."""
        return self.registry.failed()

    def request_reload(self) -> None:
        """Re-read the config file at the next turn of the main loop (from a SIGHUP handler)."""
        self._reload_requested.set()
        self._wake.set()

    def run(self) -> int:
        """Run until stopped or every pipeline has ended; the exit status (0 = all went well)."""
        setup_process()  # GIL switch interval, OpenCV threads and logging: once, never at import
        try:
            # the children that check the models run while the sinks are made and the runtime is imported
            self.model_guard.prefetch(self.config, [(p, self.factory.model_path(self.config, p))
                                                    for p in self.config.pipelines])
            try:
                self.factory.make_sinks(self.config)
                if self.mqtt is not None:
                    self.views.attach_mqtt(self.mqtt)  # subscribes before connecting
                self.views.start_server()  # before any pipeline: a port that cannot be used fails the start
            except InputError as err:  # unreadable password, certificate or token files; an HTTP port taken
                logger.error("%s", err)
                return 2
            self._make_pipelines()
            if not self.pipelines:
                logger.error("no pipeline could start; see the errors above")
                return 1
            if self.mqtt is not None:
                self._start_model_updates()  # subscribes before connecting
                self._start_discovery()
                self.mqtt.start()
            for pipeline in self.pipelines.values():
                pipeline.start()
            self._wait()
        finally:
            self._shutdown()
        if self.stop_event.is_set():
            return 0  # a requested stop (SIGTERM, Ctrl-C) is not a failure; failures were logged and reported
        return 1 if self.failed or any(p.status == "failed" for p in self.pipelines.values()) else 0

    def _start_discovery(self) -> None:
        if not self.config.homeassistant.enabled:
            return
        from edge_agent.service.homeassistant import DiscoveryAnnouncer

        self.discovery = DiscoveryAnnouncer(self.mqtt, self.config)
        self._announce_pipelines()

    def _announce_pipelines(self) -> None:
        """Tell Home Assistant which pipelines (and so entities) there are now."""
        if self.discovery is None:
            return
        from edge_agent.service.homeassistant import pipeline_entities

        entities = []
        for config in self.config.pipelines:
            pipeline = self.registry.get(config.name)
            if pipeline is not None:
                entities.append(pipeline_entities(config, pipeline.active.task, pipeline.active.labels))
            else:  # could not start: its diagnostics say so
                entities.append(pipeline_entities(config, config.task if config.task != "auto" else "unknown", None))
        self.discovery.update(entities)

    def _start_model_updates(self) -> None:
        from edge_agent.service.model_updates import ModelUpdates

        self.updates = ModelUpdates(self, self.mqtt, self.notifier.watchdog_timeout_s)
        self.updates.start()

    def _make_pipelines(self) -> None:
        for pipeline_config in self.config.pipelines:
            try:
                self.registry.put(pipeline_config.name, self.factory.make_pipeline(self.config, pipeline_config))
            except Exception as err:  # one bad pipeline must not take the others down
                message = str(err) or type(err).__name__
                self.registry.mark_failed(pipeline_config.name, message)
                logger.error("pipeline %s cannot start: %s", pipeline_config.name, message)

    def install_model(self, name: str, active: ActiveModel, restart: bool = False) -> None:
        """Serve `active` in pipeline `name`: swapped between two frames, or, when the pipeline has
        failed, has not started, or `restart` is asked (its invoke hung), in a new pipeline."""
        with self._changes:
            if self._stopping.is_set():
                raise RuntimeError("the agent is stopping")
            pipeline = self.registry.get(name)
            if pipeline is not None and not restart and pipeline.status != "failed":
                pipeline.swap_model(active)  # a pipeline whose source has ended keeps it for nothing: no replay
                self._announce_pipelines()  # the new model may have other labels (entities)
                self._state_due()
                return
            config = next(p for p in self.config.pipelines if p.name == name)
            if pipeline is not None:
                pipeline.abandon()  # before reading last_seq: a late result must not reuse a number
                pipeline.join(min(self.config.shutdown_timeout_s, RESTART_JOIN_S))  # a hung invoke is left behind
            new = self.factory.make_pipeline(self.config, config, last_seq=pipeline.last_seq if pipeline is not None else None,
                                             active=active)
            self.registry.put(name, new)
            new.start()
            logger.info("pipeline %s restarted with model %s %s", name, active.ref.name, active.ref.version)
            self._announce_pipelines()
            self._state_due()

    def _state_due(self) -> None:
        """Publish the state now, from the main loop: who pushed a model reads its version at once,
        not up to state_interval_s later."""
        self._state_now.set()
        self._wake.set()

    def _wait(self) -> None:
        next_state = time.monotonic()
        interval_s = self.config.mqtt.state_interval_s
        while True:
            self._follow_reload()
            if self.stop_event.is_set():
                return
            now = time.monotonic()
            for pipeline in self.pipelines.values():
                pipeline.sample_rate(now)
            self.views.tick(now)
            if now >= next_state or self._state_now.is_set():
                self._state_now.clear()
                self.publish_state()
                next_state = time.monotonic() + interval_s
            self._tell_systemd()
            if self._reloader is None and all(p.finished.is_set() and not self._on_probation(name)
                                              for name, p in self.pipelines.items()):
                logger.info("every pipeline has ended")
                return
            self._wake.wait(POLL_S)
            self._wake.clear()

    def _on_probation(self, name: str) -> bool:
        """A pipeline that fails on probation is about to be rolled back, not finished."""
        return self.updates is not None and self.updates.in_probation(name)

    def _follow_reload(self) -> None:
        """On the main loop: start a requested reload on its own thread (loading models takes seconds
        and the main loop must go on pinging the watchdog and publishing state), and tell systemd
        when it is done."""
        if self._reloader is not None and not self._reloader.is_alive():
            self._reloader = None
            self.notifier.ready(self._reload_outcome)
        if self._reloader is None and self._reload_requested.is_set() and not self.stop_event.is_set():
            self._reload_requested.clear()
            if self.config_path is None:
                logger.warning("reload ignored: the agent was started without a config file")
                return
            self.notifier.reloading("reloading configuration")
            self._reloader = threading.Thread(target=self._reload_in_background, name="reload", daemon=True)
            self._reloader.start()

    def _reload_in_background(self) -> None:
        try:
            self._reload_outcome = self.reload()
        except Exception:  # the edge of the thread: a bug in a reload must not end the agent
            logger.exception("reload failed; the running pipelines stay as they are")
            self._reload_outcome = "reload failed"
        finally:
            self._wake.set()

    def reload(self) -> str:
        """Apply the config file again; an invalid file is refused and the running config stays.
        Returns what to tell systemd. Models are loaded while the old pipelines keep serving."""
        with self._changes:
            return self._reload()

    def _reload(self) -> str:
        try:
            new = load_config(self.config_path)
        except ConfigError as err:
            logger.error("reload rejected, the running configuration stays: %s", err)
            return "reload rejected"
        plan = plan_reload(self.config, new)
        if plan.ignored:
            logger.warning("reload: %s changed; that takes a restart (systemctl restart edge-agent)", ", ".join(plan.ignored_keys))
        if new.log_level != self.config.log_level and self.log_level_override is None:
            apply_log_level(new.log_level)
            logger.warning("reload: log_level is now %s", new.log_level)
        self.config = effective_config(self.config, new, plan)
        for name in plan.remove:
            pipeline = self.registry.remove(name)
            if pipeline is not None:
                pipeline.stop()
                if not pipeline.join(self.config.shutdown_timeout_s):
                    pipeline.abandon()  # hung: nothing more may be published under its name
                self.views.forget(name)
                logger.info("reload: pipeline %s removed", name)
        for config in plan.swap_model:
            self._swap_model(config)
        for config in plan.add + plan.restart:
            self._replace_pipeline(config)
        self._announce_pipelines()
        logger.info("reload done: %d added, %d restarted, %d models swapped, %d removed",
                    len(plan.add), len(plan.restart), len(plan.swap_model), len(plan.remove))
        return "configuration reloaded"

    def _swap_model(self, config: PipelineConfig) -> None:
        pipeline = self.registry.get(config.name)
        if pipeline is None or pipeline.status == "failed":  # it never started or died: start it whole
            self._replace_pipeline(config)
            return
        try:
            active = self.factory.build_model(self.config, config)
        except Exception as err:  # keep serving with the model that works
            logger.error("reload: pipeline %s keeps its model: %s", config.name, err)
            return
        pipeline.config = config
        pipeline.swap_model(active)
        logger.info("reload: pipeline %s now uses model %s (sha256 %s…)", config.name, active.ref.name, active.ref.sha256[:12])

    def _replace_pipeline(self, config: PipelineConfig) -> None:
        old = self.registry.get(config.name)
        try:
            active = self.factory.build_model(self.config, config)  # seconds of loading and warm-up: the old one keeps serving
        except Exception as err:
            logger.error("reload: pipeline %s %s: %s", config.name, "keeps running as it was" if old else "cannot start", err)
            if old is None:
                self.registry.mark_failed(config.name, str(err))
            return
        if old is not None:
            old.stop()
            if not old.join(self.config.shutdown_timeout_s):
                old.abandon()  # hung: it must publish nothing more under this name
        # numbering goes on from what the old pipeline really published, once it has stopped
        new = self.factory.make_pipeline(self.config, config, last_seq=old.last_seq if old is not None else None,
                                         active=active)
        self.registry.put(config.name, new)
        new.start()
        logger.info("reload: pipeline %s %s", config.name, "restarted" if old else "started")

    def _started_up(self) -> bool:
        """Every pipeline has published, ended, or found its source missing: start-up is over.
        (A board that boots without its camera must still become ready, not be restarted.)"""
        def settled(pipeline: Pipeline) -> bool:
            health = pipeline.source_health
            return bool(pipeline.first_published_mono) or pipeline.finished.is_set() or (
                health is not None and health.state == "lost")
        return all(settled(p) for p in self.pipelines.values())

    def _tell_systemd(self) -> None:
        """READY=1 after the first prediction; watchdog pings while every running pipeline beats."""
        running = {name: p for name, p in self.pipelines.items() if not p.finished.is_set()}
        if not self._ready_sent and self._started_up():
            self._ready_sent = self.notifier.ready(f"{len(running)} pipeline(s) running")
        status = ", ".join(f"{name} {p.frames_processed} frames" for name, p in running.items())
        # every loop of every running pipeline: capture (alive while it waits for a lost camera) and inference
        self.watchdog.tick({stage: beat for p in running.values() for stage, beat in p.heartbeats().items()}, status)

    def _shutdown(self) -> None:
        self.notifier.stopping("stopping")
        self._stopping.set()  # no model install starts a pipeline from now on
        self.views.stop()  # live views end, no snapshot is answered from now on
        self.model_guard.close()
        if self.updates is not None:
            self.updates.stop()
        if self.discovery is not None:
            self.discovery.stop()
        deadline = time.monotonic() + self.config.shutdown_timeout_s
        # a reload half-way (loading a model) finishes first, so no pipeline starts after the others stopped
        changing = self._changes.acquire(timeout=max(0.0, deadline - time.monotonic()))
        try:
            self._stop_pipelines(deadline)
        finally:
            if changing:
                self._changes.release()
        if self.mqtt is not None:
            self.mqtt.settle(max(0.0, min(1.0, deadline - time.monotonic())))  # the last state counts every message
        self.publish_state()
        for sink in self.factory.sinks.values():
            sink.close(max(0.5, deadline - time.monotonic()))

    def _stop_pipelines(self, deadline: float) -> None:
        pipelines = self.pipelines
        for pipeline in pipelines.values():
            pipeline.stop()
        for pipeline in pipelines.values():
            if not pipeline.join(max(0.0, deadline - time.monotonic())):
                logger.warning("pipeline %s did not stop within shutdown_timeout_s", pipeline.name)

    def state(self) -> dict:
        """The retained state message: version, uptime, and every pipeline's counters."""
        pipelines = {name: p.snapshot() for name, p in self.pipelines.items()}
        for name, reason in self.failed.items():
            pipelines[name] = {"status": "failed", "error": reason}
        state = {
            "device": self.config.device_id,
            "version": __version__,
            "ts": round(time.time(), 3),
            "uptime_s": round(time.monotonic() - self.started_mono, 1),
            "groups": list(self.config.groups),
            "pipelines": pipelines,
        }
        if self.updates is not None:
            state["models"] = self.updates.counters()
        if self.mqtt is not None:
            state["mqtt"] = {
                "connected": self.mqtt.connected.is_set(),
                "server": self.mqtt.server,  # the broker the board is on (or was last on, when not connected)
                "published": self.mqtt.published,
                "delivered": self.mqtt.delivered,
                "pending": self.mqtt.pending,
                "dropped": self.mqtt.dropped,
            }
            if self.mqtt.spool is not None:
                state["mqtt"]["spool"] = self.mqtt.spool.snapshot()
        return state

    def publish_state(self) -> None:
        if self.mqtt is not None:
            self.mqtt.publish_state(json.dumps(self.state(), separators=(",", ":")))
