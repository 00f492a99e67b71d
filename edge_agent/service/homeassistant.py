"""Home Assistant discovery at run time: what to announce, and when.

The device message (edge_agent.mqtt.homeassistant) is published retained at every connection,
again after a short random delay whenever Home Assistant says `online` on
`{discovery_prefix}/status` (its birth message: it may have lost retained messages, and a random
delay keeps a fleet of boards from answering at the same instant), and after every reload. The
components announced are saved with the spool's state, so a component gone since the previous run
(or reload) is sent once as a removal and disappears from Home Assistant.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from typing import Any, Sequence

from edge_agent import __version__
from edge_agent.config import AgentConfig, PipelineConfig
from edge_agent.interpret.stage import TRACKED_TASKS, reported_labels
from edge_agent.mqtt.homeassistant import (
    AgentDevice,
    PipelineEntities,
    ZoneEntities,
    discovery_json,
    discovery_payload,
    discovery_topic,
    platforms_of,
)

logger = logging.getLogger(__name__)

REANNOUNCE_DELAY_S = (1.0, 5.0)  # after Home Assistant's birth message: a random delay in this range
STATE_NAME = "homeassistant/components"


def pipeline_entities(config: PipelineConfig, task: str, model_labels: Sequence[str] | None) -> PipelineEntities:
    """What a pipeline offers Home Assistant, from its configuration and its model."""
    labels = reported_labels(config.track, model_labels) if task in TRACKED_TASKS else ()
    zones = tuple(ZoneEntities(z.name, tuple(l for l in labels if not z.labels or l in z.labels)) for z in config.zones)
    return PipelineEntities(config.name, task, labels, zones if task in TRACKED_TASKS else (), config.events.enabled,
                            snapshots="mqtt" in config.sinks, label_snapshots=config.snapshot.events)


class DiscoveryAnnouncer:
    def __init__(self, publisher: Any, config: AgentConfig):
        self._publisher = publisher
        self._prefix = config.homeassistant.discovery_prefix
        self._device = AgentDevice(config.device_id, publisher.base_topic, __version__, config.mqtt.state_interval_s,
                                   config.homeassistant.support_url)
        self.topic = discovery_topic(self._prefix, self._device)
        self._lock = threading.Lock()
        self._payload: str | None = None
        self._timer: threading.Timer | None = None
        saved = publisher.spool.state(STATE_NAME) if publisher.spool is not None else None
        self._announced: dict[str, str] = self._load(saved)
        publisher.on_connected(self._announce)
        publisher.subscribe(f"{self._prefix}/status", self._on_home_assistant_status)

    def update(self, pipelines: list[PipelineEntities]) -> None:
        """Announce these pipelines; components announced before and not now are removed."""
        current = discovery_payload(self._device, pipelines)
        removed = {cid: platform for cid, platform in self._announced.items() if cid not in current["cmps"]}
        payload = discovery_payload(self._device, pipelines, removed)
        with self._lock:
            self._payload = discovery_json(payload)
            self._announced = platforms_of(payload)
        if self._publisher.spool is not None:
            self._publisher.spool.submit_messages([], {STATE_NAME: json.dumps(self._announced, sort_keys=True)})
        if removed:
            logger.info("Home Assistant: removing %d entities of pipelines, zones or labels no longer configured", len(removed))
        if self._publisher.connected.is_set():
            self._announce()

    def stop(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()

    def _announce(self) -> None:
        with self._lock:
            payload = self._payload
        if payload is not None:
            self._publisher.publish(self.topic, payload, qos=1, retain=True)

    def _on_home_assistant_status(self, topic: str, payload: bytes) -> None:
        """On paho's thread: Home Assistant (re)started; announce again a little later."""
        if payload.strip().lower() != b"online":
            return
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = threading.Timer(random.uniform(*REANNOUNCE_DELAY_S), self._announce)
            self._timer.daemon = True
            self._timer.start()

    @staticmethod
    def _load(saved: str | None) -> dict[str, str]:
        try:
            value = json.loads(saved) if saved else {}
        except ValueError:
            return {}
        return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}
