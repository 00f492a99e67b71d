"""The agent's views, wired: a tap per pipeline, MQTT snapshots, the HTTP server, the metrics.

A tap belongs to a pipeline's name, not to one Pipeline object, so a live view stays open across
a reload or a model push that replaces the pipeline. Taps exist when someone could look (MQTT
snapshot requests, or the HTTP server); without MQTT and HTTP a pipeline gets none and pays
nothing. The server is imported only when [http] is enabled, prometheus_client at the first scrape.
"""

from __future__ import annotations

import logging
import threading
import time
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping

from edge_agent.config import PipelineConfig
from edge_agent.views.tap import PipelineTap

if TYPE_CHECKING:
    from edge_agent.service.agent import Agent

logger = logging.getLogger(__name__)

HEALTH_STALE_S = 15.0  # without systemd's WatchdogSec=, a loop silent this long is unhealthy


class AgentViews:
    """Everything that looks at the agent's pipelines; the HTTP server's `Site` (views.http_handler)."""

    def __init__(self, agent: Agent):
        self._agent = agent
        self._http = agent.config.http
        self._lock = threading.Lock()
        self._taps: Mapping[str, PipelineTap] = MappingProxyType({})
        self.metrics = None
        self.server = None
        self.snapshots = None

    @property
    def wanted(self) -> bool:
        return self._http.enabled or self.snapshots is not None

    # ----------------------------------------------------------------- start and stop
    def start_server(self) -> None:
        """Bind and serve; HttpSetupError (an InputError) names what is wrong (port taken, token file...)."""
        if not self._http.enabled:
            return
        from edge_agent.views.access import Access, read_token, tls_context
        from edge_agent.views.http_server import ViewServer

        access = Access(read_token(self._http.token_file) if self._http.token_file else None)
        tls = tls_context(self._http)
        self.server = ViewServer(self._http, self, access, tls)
        self.server.start()

    def attach_mqtt(self, publisher: Any) -> None:
        """Answer snapshot/get and publish event snapshots through `publisher` (before it connects)."""
        from edge_agent.views.snapshots import SnapshotService

        self.snapshots = SnapshotService(publisher, self.taps)
        self.snapshots.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        if self.snapshots is not None:
            self.snapshots.stop()

    # ----------------------------------------------------------------- pipelines
    def tap_for(self, config: PipelineConfig) -> PipelineTap | None:
        """The tap a (new) pipeline under `config.name` writes into; None when nobody could look."""
        if not self.wanted:
            return None
        with self._lock:
            tap = self._taps.get(config.name)
            if tap is None:
                tap = PipelineTap(config.name, self._http.live_fps)
                self._taps = MappingProxyType({**self._taps, config.name: tap})
        tap.configure(config)
        if self._http.enabled:
            tap.measure_latency()
        if self.snapshots is not None:
            self.snapshots.attach(tap, served="mqtt" in config.sinks)
        return tap

    def forget(self, name: str) -> None:
        """The pipeline was removed (reload)."""
        with self._lock:
            self._taps = MappingProxyType({k: v for k, v in self._taps.items() if k != name})

    def tick(self, now_mono: float) -> None:
        """From the agent's main loop: frames nobody used for a while are let go."""
        for tap in self._taps.values():
            tap.let_go(now_mono)

    # ----------------------------------------------------------------- the Site the server shows
    def taps(self) -> Mapping[str, PipelineTap]:
        return self._taps

    def state(self) -> dict:
        return self._agent.state()

    def health(self) -> tuple[bool, dict]:
        """Every pipeline running with every loop beating recently; the reasons where not."""
        agent = self._agent
        limit_s = agent.watchdog.max_age_s or HEALTH_STALE_S
        now = time.monotonic()
        report: dict[str, str] = {p.name: "starting" for p in agent.config.pipelines}  # its model is loading
        report.update({name: f"could not start: {reason}" for name, reason in agent.failed.items()})
        for name, pipeline in agent.pipelines.items():
            if pipeline.status == "failed":
                report[name] = f"failed: {pipeline.error}"
                continue
            stale = {stage: now - beat for stage, beat in pipeline.heartbeats().items() if now - beat > limit_s}
            if stale:
                report[name] = "no heartbeat from " + ", ".join(f"{stage} for {age:.0f} s" for stage, age in stale.items())
            else:
                report[name] = "ok" if pipeline.status == "running" else pipeline.status
        healthy = all(text in ("ok", "stopped") for text in report.values())
        return healthy, {"ok": healthy, "pipelines": report}

    def metrics_exposition(self) -> tuple[bytes, str]:
        """The exposition; prometheus_client is imported at the first scrape (nothing to pay before)."""
        from edge_agent.views.metrics import CONTENT_TYPE, AgentMetrics

        with self._lock:
            if self.metrics is None:
                self.metrics = AgentMetrics(self.state, self.taps, self._snapshot_counts)
        return self.metrics.exposition(), CONTENT_TYPE

    def _snapshot_counts(self) -> dict[str, int]:
        s = self.snapshots
        return {"answered": s.answered, "limited": s.limited, "published_events": s.published_events} if s else {}
