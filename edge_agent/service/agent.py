"""The daemon: builds sinks and pipelines from the config, reports state, shuts down cleanly.

Start-up reads like a table of contents: sinks, pipelines, connect, run, stop. A pipeline
whose model or source cannot be used fails alone with a clear error in the log and in the
state topic; the agent keeps the others running.
"""

from __future__ import annotations

import json
import logging
import threading
import time

from edge_agent import __version__
from edge_agent.config import AgentConfig, PipelineConfig
from edge_agent.service.active_model import build_active_model
from edge_agent.service.pipeline import Pipeline
from edge_agent.sinks import Sink

logger = logging.getLogger(__name__)

POLL_S = 0.2


class Agent:
    """Owns every pipeline and sink of one config."""

    def __init__(self, config: AgentConfig):
        self.config = config
        self.stop_event = threading.Event()
        self.started_mono = time.monotonic()
        self.pipelines: dict[str, Pipeline] = {}
        self.failed: dict[str, str] = {}  # pipelines that could not start, with the reason
        self.mqtt = None
        self._sinks: dict[str, Sink] = {}

    def request_stop(self) -> None:
        self.stop_event.set()

    def run(self) -> int:
        """Run until stopped or every pipeline has ended; the exit status (0 = all went well)."""
        try:
            self._make_sinks()
            self._make_pipelines()
            if not self.pipelines:
                logger.error("no pipeline could start; see the errors above")
                return 1
            if self.mqtt is not None:
                self.mqtt.start()
            for pipeline in self.pipelines.values():
                pipeline.start()
            self._wait()
        finally:
            self._shutdown()
        return 1 if self.failed or any(p.status == "failed" for p in self.pipelines.values()) else 0

    def _make_sinks(self) -> None:
        used = {sink for pipeline in self.config.pipelines for sink in pipeline.sinks}
        if "mqtt" in used and self.config.mqtt.enabled:
            from edge_agent.sinks.mqtt import MqttPublisher

            self.mqtt = MqttPublisher(self.config.mqtt, self.config.device_id)
            self._sinks["mqtt"] = self.mqtt
        if "serial" in used and self.config.serial is not None:
            from edge_agent.sinks.serial import SerialSink

            self._sinks["serial"] = SerialSink(self.config.serial)
        if "stdout" in used:
            from edge_agent.sinks.stdout import StdoutSink

            self._sinks["stdout"] = StdoutSink()

    def _make_pipelines(self) -> None:
        for pipeline_config in self.config.pipelines:
            try:
                self.pipelines[pipeline_config.name] = self._make_pipeline(pipeline_config)
            except Exception as err:  # one bad pipeline must not take the others down
                message = str(err) or type(err).__name__
                self.failed[pipeline_config.name] = message
                logger.error("pipeline %s cannot start: %s", pipeline_config.name, message)

    def _make_pipeline(self, config: PipelineConfig) -> Pipeline:
        active = build_active_model(config)
        logger.info(
            "pipeline %s: model %s (%s, sha256 %s…) on %s, delegate %s, %d threads",
            config.name, active.ref.name, active.task, active.ref.sha256[:12],
            active.model.runtime, active.model.delegate, active.model.num_threads,
        )
        sinks = [self._sinks[name] for name in config.sinks if name in self._sinks]
        return Pipeline(config, self.config.device_id, active, sinks)

    def _wait(self) -> None:
        next_state = time.monotonic()
        interval_s = self.config.mqtt.state_interval_s
        while not self.stop_event.is_set():
            if time.monotonic() >= next_state:
                self.publish_state()
                next_state = time.monotonic() + interval_s
            if all(p.finished.is_set() for p in self.pipelines.values()):
                logger.info("every pipeline has ended")
                return
            self.stop_event.wait(POLL_S)

    def _shutdown(self) -> None:
        deadline = time.monotonic() + self.config.shutdown_timeout_s
        for pipeline in self.pipelines.values():
            pipeline.stop()
        for pipeline in self.pipelines.values():
            if not pipeline.join(max(0.0, deadline - time.monotonic())):
                logger.warning("pipeline %s did not stop within shutdown_timeout_s", pipeline.name)
        self.publish_state()
        for sink in self._sinks.values():
            sink.close(max(0.5, deadline - time.monotonic()))

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
            "pipelines": pipelines,
        }
        if self.mqtt is not None:
            state["mqtt"] = {
                "connected": self.mqtt.connected.is_set(),
                "published": self.mqtt.published,
                "delivered": self.mqtt.delivered,
                "pending": self.mqtt.pending,
                "dropped": self.mqtt.dropped,
            }
        return state

    def publish_state(self) -> None:
        if self.mqtt is not None:
            self.mqtt.publish_state(json.dumps(self.state(), separators=(",", ":")))
