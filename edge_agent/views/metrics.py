"""`/metrics`: the agent in Prometheus' exposition format, through prometheus_client.

Two kinds of metric, so that a pipeline pays next to nothing per frame for what can be read later:
- the two latency histograms are observed per frame into views.latency (about 0.3 µs each, on
  the pipeline's output thread, no lock): a histogram cannot be rebuilt from the last value;
- everything else (counters, gauges, info) is read at scrape time from the same numbers the state
  topic publishes, so /metrics and /api/state always agree.

All of it is a custom collector: prometheus_client builds the families and writes the exposition.
This module (and prometheus_client, ~0.9 MB of RSS) is imported at the first scrape.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector

from edge_agent.views.tap import PipelineTap

PREFIX = "edge_agent"
SOURCE_UP_STATES = ("live", "playing")
# what generate_latest writes (the classic text format); every Prometheus version scrapes it
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class AgentMetrics:
    """The agent's registry: every family built at scrape time (histograms from the taps)."""

    def __init__(self, state: Callable[[], dict], taps: Callable[[], Mapping[str, PipelineTap]],
                 snapshot_counts: Callable[[], dict[str, int]] | None = None):
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_StateCollector(state, taps, snapshot_counts or dict))
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, process_cpu_seconds_total, ...

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector:
    """Counters and gauges from the state message, built at scrape time."""

    def __init__(self, state: Callable[[], dict], taps: Callable[[], Mapping[str, PipelineTap]],
                 snapshot_counts: Callable[[], dict[str, int]]):
        self._state = state
        self._taps = taps
        self._snapshot_counts = snapshot_counts

    def describe(self) -> Iterable[Metric]:
        return []  # names are known only at scrape time; nothing to check at registration

    def collect(self) -> Iterable[Metric]:
        state = self._state()
        yield InfoMetricFamily(PREFIX, "The agent", value={"device": str(state.get("device", "")),
                                                            "version": str(state.get("version", ""))})
        yield GaugeMetricFamily(f"{PREFIX}_uptime_seconds", "Time since the agent started", value=state.get("uptime_s", 0.0))
        yield from self._pipelines(state.get("pipelines", {}))
        yield from self._latencies()
        yield from self._mqtt(state.get("mqtt"))
        counts = self._snapshot_counts()
        if counts:
            published = CounterMetricFamily(f"{PREFIX}_snapshots_published", "Snapshots published over MQTT",
                                            labels=["kind"])
            published.add_metric(["request"], counts.get("answered", 0))
            published.add_metric(["label"], counts.get("published_events", 0))
            yield published
            yield CounterMetricFamily(f"{PREFIX}_snapshot_requests_limited", "snapshot/get requests folded into "
                                      "another answer by the rate limit", value=counts.get("limited", 0))

    def _pipelines(self, pipelines: Mapping[str, Any]) -> Iterable[Metric]:
        labels = ["pipeline"]
        up = GaugeMetricFamily(f"{PREFIX}_pipeline_up", "1 while the pipeline runs, 0 when it stopped or failed", labels=labels)
        fps = GaugeMetricFamily(f"{PREFIX}_pipeline_frames_per_second", "Frames processed per second (last seconds)",
                                labels=labels)
        source_up = GaugeMetricFamily(f"{PREFIX}_source_up", "1 while the source delivers frames", labels=labels)
        counters = {key: CounterMetricFamily(f"{PREFIX}_frames_{key}", f"Frames {key}", labels=labels)
                    for key in ("captured", "processed", "published", "dropped")}
        model = InfoMetricFamily(f"{PREFIX}_model", "The model a pipeline runs",
                                 labels=["pipeline", "name", "version", "sha256", "task", "runtime", "delegate"])
        viewers = GaugeMetricFamily(f"{PREFIX}_live_viewers", "Open live views", labels=labels)
        taps = self._taps()
        for name, p in pipelines.items():
            up.add_metric([name], 1.0 if p.get("status") == "running" else 0.0)
            if "frames_processed" not in p:  # could not start: only `up` says anything
                continue
            fps.add_metric([name], p.get("fps", 0.0))
            source_up.add_metric([name], 1.0 if p.get("source", {}).get("state") in SOURCE_UP_STATES else 0.0)
            for key, family in counters.items():
                family.add_metric([name], p.get(f"frames_{key}", 0))
            m = p.get("model", {})
            model.add_metric([name], {"name": str(m.get("name", "")), "version": str(m.get("version", "")),
                                      "sha256": str(m.get("sha256", "")), "task": str(p.get("task", "")),
                                      "runtime": str(p.get("runtime", "")), "delegate": str(p.get("delegate", ""))})
            tap = taps.get(name)
            viewers.add_metric([name], tap.watchers if tap is not None else 0)
        yield from (up, fps, source_up, *counters.values(), model, viewers)

    def _latencies(self) -> Iterable[Metric]:
        inference = HistogramMetricFamily(f"{PREFIX}_inference_seconds", "Interpreter invoke time per frame",
                                          labels=["pipeline"])
        total = HistogramMetricFamily(f"{PREFIX}_capture_to_publish_seconds",
                                      "From frame capture to its prediction handed to the sinks", labels=["pipeline"])
        for name, tap in self._taps().items():
            for family, histogram in ((inference, tap.inference_latency), (total, tap.total_latency)):
                if histogram is not None:
                    family.add_metric([name], histogram.cumulative(), sum_value=histogram.sum_s)
        yield from (inference, total)

    @staticmethod
    def _mqtt(mqtt: Mapping[str, Any] | None) -> Iterable[Metric]:
        if mqtt is None:
            return
        yield GaugeMetricFamily(f"{PREFIX}_mqtt_connected", "1 while connected to the broker",
                                value=1.0 if mqtt.get("connected") else 0.0)
        for key, text in (("published", "Messages handed to the MQTT client"),
                          ("delivered", "Messages the broker acknowledged (deliveries)"),
                          ("dropped", "Messages given up before the broker or the spool had them")):
            yield CounterMetricFamily(f"{PREFIX}_mqtt_messages_{key}", text, value=mqtt.get(key, 0))
        yield GaugeMetricFamily(f"{PREFIX}_mqtt_messages_pending", "Messages not yet acknowledged", value=mqtt.get("pending", 0))
        spool = mqtt.get("spool")
        if spool is not None:
            yield GaugeMetricFamily(f"{PREFIX}_spool_messages", "Messages waiting in the disk spool", value=spool.get("messages", 0))
            yield GaugeMetricFamily(f"{PREFIX}_spool_bytes", "Size of the spooled messages", value=spool.get("bytes", 0))
            yield GaugeMetricFamily(f"{PREFIX}_spool_max_bytes", "The spool's size limit", value=spool.get("max_bytes", 0))
            yield CounterMetricFamily(f"{PREFIX}_spool_dropped_messages", "Messages the full spool dropped",
                                      value=spool.get("dropped", 0))
