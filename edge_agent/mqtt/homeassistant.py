"""Home Assistant MQTT discovery: the agent is one device, its pipelines' results its entities.

One retained message on `{discovery_prefix}/device/{object_id}/config` (device-based discovery,
Home Assistant 2024.11 and later) with `dev` (the device), `o` (origin: name, sw version, support
URL) and `cmps` (one entry per entity). Availability is the agent's own `{prefix}/{device}/status`
(retained "online", Last Will "offline"), given once for the device and inherited by every entity.

Per pipeline:
  detection / pose    a count sensor (state_class measurement) and an occupancy binary_sensor per
                      reported label and `all`, in the whole frame and per zone
  classification      a sensor with the stable label (its score and since_ts as attributes)
  both                an `event` entity fed by the pipeline's events topic (new/update/end, change)
  snapshots           an `image` entity on {pipeline}/snapshot (requested and periodic snapshots) and,
                      for tracked labels, one on {pipeline}/{label}/snapshot (the best frame, retained)
  diagnostics         fps, inference ms, frames dropped, source state, model (entity_category
                      diagnostic, from the retained state topic, expire_after 3 state intervals)

Every entity has a unique_id, and both `default_entity_id` (honoured by Home Assistant 2025.10
and later) and `object_id` (honoured before, deprecated since), so entity ids are the same on old
and new installations. A component removed (a pipeline, zone or label gone after a reload) is sent
once as `{"p": platform}` alone, which is how Home Assistant's discovery removes one component of
a device (homeassistant/components/mqtt/discovery.py: a component config that is empty once the
platform is taken out is a removal).

Rules checked against Home Assistant's own source: see tests/test_homeassistant_discovery.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable

from edge_agent.config.topics import label_segment, slug

ORIGIN_NAME = "edge-agent"
EVENT_TYPES = {"detection": ["new", "update", "end"], "pose": ["new", "update", "end"], "classification": ["change"]}
TRACKED_TASKS = ("detection", "pose")
MIN_EXPIRE_AFTER_S = 60
# Home Assistant's event entity reads `event_type` from the JSON; ours is named `type`
EVENT_TEMPLATE = "{{ dict(value_json, event_type=value_json.type) | to_json }}"
OCCUPANCY_TEMPLATE = "{{ 'ON' if value | int(0) > 0 else 'OFF' }}"
LABEL_TEMPLATE = "{{ value if value else None }}"  # an empty (cleared) label is unknown, not ""
SNAPSHOT_CONTENT_TYPE = "image/jpeg"  # the image platform's content_type (it takes image_topic, not url_topic)


@dataclass(frozen=True)
class ZoneEntities:
    name: str
    labels: tuple[str, ...]  # the reported labels this zone counts


@dataclass(frozen=True)
class PipelineEntities:
    """What one pipeline offers Home Assistant."""

    name: str
    task: str
    labels: tuple[str, ...] = ()  # reported labels (counts and occupancy)
    zones: tuple[ZoneEntities, ...] = ()
    events: bool = True  # events, counts and label topics are published
    snapshots: bool = True  # {pipeline}/snapshot (answers to snapshot/get, periodic snapshots)
    label_snapshots: bool = True  # {pipeline}/{label}/snapshot (the best frame of each tracked label)


@dataclass(frozen=True)
class AgentDevice:
    device_id: str
    base_topic: str  # {topic_prefix}/{device_id}
    version: str
    state_interval_s: float = 5.0
    support_url: str = ""

    @property
    def object_id(self) -> str:
        return f"edge_agent_{slug(self.device_id) or 'device'}"


def discovery_topic(discovery_prefix: str, device: AgentDevice) -> str:
    return f"{discovery_prefix}/device/{device.object_id}/config"


def components_of(device: AgentDevice, pipeline: PipelineEntities) -> dict[str, dict[str, Any]]:
    """Component id → component config for one pipeline (ids are unique within the device)."""
    ids = _Ids(device, pipeline.name)
    base = f"{device.base_topic}/{pipeline.name}"
    found: dict[str, dict[str, Any]] = {}
    if pipeline.events and pipeline.task in TRACKED_TASKS:
        found.update(_counts(ids, base, "", "", pipeline.labels))
        for zone in pipeline.zones:
            found.update(_counts(ids, f"{base}/{zone.name}", f"{slug(zone.name)}_", f"{zone.name} ", zone.labels))
    if pipeline.events and pipeline.task == "classification":
        found[ids.component("label")] = ids.entity("sensor", "label", "label", {
            "state_topic": f"{base}/label", "value_template": LABEL_TEMPLATE,
            "json_attributes_topic": f"{base}/label/attributes", "icon": "mdi:tag"})
    if pipeline.events and pipeline.task in EVENT_TYPES:
        found[ids.component("events")] = ids.entity("event", "events", "events", {
            "state_topic": f"{base}/events", "event_types": EVENT_TYPES[pipeline.task],
            "value_template": EVENT_TEMPLATE})
    if pipeline.snapshots:
        found[ids.component("snapshot")] = ids.entity("image", "snapshot", "snapshot", {
            "image_topic": f"{base}/snapshot", "content_type": SNAPSHOT_CONTENT_TYPE})
    if pipeline.snapshots and pipeline.label_snapshots and pipeline.events and pipeline.task in TRACKED_TASKS:
        for label in pipeline.labels:
            what = f"{slug(label) or label_segment(label)}_snapshot"
            found.setdefault(ids.component(what), ids.entity("image", what, f"{label} snapshot", {
                "image_topic": f"{base}/{label_segment(label)}/snapshot", "content_type": SNAPSHOT_CONTENT_TYPE}))
    found.update(_diagnostics(ids, device))
    return found


def discovery_payload(device: AgentDevice, pipelines: Iterable[PipelineEntities],
                      removed: dict[str, str] | None = None) -> dict[str, Any]:
    """The device's discovery message. `removed` (component id → platform) are sent as removals."""
    components: dict[str, dict[str, Any]] = {}
    for pipeline in pipelines:
        components.update(components_of(device, pipeline))
    for component_id, platform in (removed or {}).items():
        components.setdefault(component_id, {"p": platform})
    origin = {"name": ORIGIN_NAME, "sw": device.version}
    if device.support_url:
        origin["url"] = device.support_url
    return {
        "dev": {"ids": [device.object_id], "name": device.device_id, "mf": "edge-agent",
                "mdl": "edge-agent inference daemon", "sw": device.version},
        "o": origin,
        "availability_topic": f"{device.base_topic}/status",
        "payload_available": "online",
        "payload_not_available": "offline",
        "qos": 1,
        "cmps": components,
    }


def platforms_of(payload: dict[str, Any]) -> dict[str, str]:
    """Component id → platform of the components a payload announces (not its removals)."""
    return {cid: c["p"] for cid, c in payload["cmps"].items() if len(c) > 1}


def discovery_json(payload: dict[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"), sort_keys=False)


class _Ids:
    """unique_id, default_entity_id and object_id of one pipeline's entities."""

    def __init__(self, device: AgentDevice, pipeline: str):
        self.device = device
        self.pipeline = pipeline
        self.prefix = f"{slug(pipeline)}_"

    def component(self, what: str) -> str:
        return self.prefix + what

    def entity(self, platform: str, what: str, name: str, config: dict[str, Any]) -> dict[str, Any]:
        object_id = f"{slug(self.device.device_id) or 'device'}_{self.prefix}{what}"
        return {"p": platform, "name": f"{self.pipeline} {name}",
                "unique_id": f"{self.device.object_id}_{self.prefix}{what}",
                "default_entity_id": f"{platform}.{object_id}", "object_id": object_id, **config}


def _counts(ids: _Ids, topic_base: str, id_prefix: str, name_prefix: str, labels: tuple[str, ...]) -> dict[str, dict]:
    found: dict[str, dict[str, Any]] = {}
    for label in ("all", *labels):
        segment = "all" if label == "all" else label_segment(label)
        what = f"{id_prefix}{'all' if label == 'all' else slug(label) or segment}"
        if ids.component(f"{what}_count") in found:
            continue  # two model labels with one slug ("traffic light", "traffic_light"): the first one wins
        shown = "objects" if label == "all" else label
        topic = f"{topic_base}/count/{segment}"
        found[ids.component(f"{what}_count")] = ids.entity("sensor", f"{what}_count", f"{name_prefix}{shown} count", {
            "state_topic": topic, "state_class": "measurement", "icon": "mdi:counter"})
        found[ids.component(f"{what}_occupancy")] = ids.entity(
            "binary_sensor", f"{what}_occupancy", f"{name_prefix}{shown} occupancy", {
                "state_topic": topic, "device_class": "occupancy", "value_template": OCCUPANCY_TEMPLATE})
    return found


def _diagnostics(ids: _Ids, device: AgentDevice) -> dict[str, dict[str, Any]]:
    of = f"value_json.pipelines.get({json.dumps(ids.pipeline)}, {{}})"
    common = {"state_topic": f"{device.base_topic}/state", "entity_category": "diagnostic",
              "expire_after": max(MIN_EXPIRE_AFTER_S, int(3 * device.state_interval_s + 0.999))}
    rows = {
        "fps": ("fps", {"value_template": f"{{{{ {of}.get('fps', 0) }}}}", "unit_of_measurement": "fps",
                        "state_class": "measurement", "icon": "mdi:speedometer"}),
        "inference_ms": ("inference", {"value_template": f"{{{{ {of}.get('inference_ms', 0) }}}}",
                                       "unit_of_measurement": "ms", "device_class": "duration",
                                       "state_class": "measurement"}),
        "frames_dropped": ("frames dropped", {"value_template": f"{{{{ {of}.get('frames_dropped', 0) }}}}",
                                              "state_class": "total_increasing", "icon": "mdi:image-off"}),
        "source": ("source", {"value_template": f"{{{{ {of}.get('source', {{}}).get('state', 'failed') }}}}",
                              "icon": "mdi:cctv"}),
        "model": ("model", {"value_template": f"{{{{ ({of}.get('model', {{}}).get('name', '') ~ ' ' ~ "
                                              f"{of}.get('model', {{}}).get('version', '')) | trim }}}}",
                            "json_attributes_topic": f"{device.base_topic}/state",
                            "json_attributes_template": f"{{{{ {of}.get('model', {{}}) | to_json }}}}",
                            "icon": "mdi:brain"}),
    }
    return {ids.component(what): ids.entity("sensor", what, name, {**common, **extra})
            for what, (name, extra) in rows.items()}
