"""Home Assistant discovery payloads checked against rules taken from Home Assistant's own source
(home-assistant/core, homeassistant/components/mqtt/), not only against our expectations:

- discovery.py: TOPIC_MATCHER (`<component>/[<node_id>/]<object_id>/config`, ids [a-zA-Z0-9_-]+);
  device discovery expands `dev`/`o`/`cmps`/`p`; a component whose config is empty once `platform`
  is popped is a removal; shared options (availability, qos, ...) are inherited by components.
- schemas.py: DEVICE_DISCOVERY_SCHEMA (device, components, origin required; no other top-level keys
  than the availability options, state_topic, command_topic, message_expiry_interval, qos, encoding);
  MQTT_ENTITY_DEVICE_INFO_SCHEMA (at least one identifier); MQTT_ORIGIN_INFO_SCHEMA (name required,
  support_url a URL); check_unique_id (an entity component needs unique_id);
  MQTT_ENTITY_COMMON_SCHEMA (default_entity_id since 2025.10; object_id before).
- abbreviations.py: the abbreviations used here (dev, o, cmps, p; ids, name, mf, mdl, sw; name, sw, url).
- event.py: event_types required; the payload, after value_template, is a JSON object with `event_type`
  among event_types; retained messages are ignored.
- binary_sensor.py: payload_on/off default "ON"/"OFF"; sensor.py: "None" is no value.
- image.py: one of image_topic / url_topic (vol.Exclusive, validate_topic_required); content_type not
  with url_topic; the payload on image_topic is the image's bytes (no state_topic).
- helpers/entity_registry: entity ids are `domain.object_id`, lower case a-z, 0-9 and "_".
Templates are rendered with Jinja2's sandbox, as Home Assistant renders them (with its to_json filter).
"""

from __future__ import annotations

import json
import re

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from edge_agent.mqtt.homeassistant import (
    AgentDevice,
    PipelineEntities,
    ZoneEntities,
    discovery_payload,
    discovery_topic,
    platforms_of,
)

TOPIC_MATCHER = re.compile(r"(?P<component>\w+)/(?:(?P<node_id>[a-zA-Z0-9_-]+)/)?(?P<object_id>[a-zA-Z0-9_-]+)/config")
ABBREVIATIONS = {"dev": "device", "o": "origin", "cmps": "components", "p": "platform", "uniq_id": "unique_id",
                 "def_ent_id": "default_entity_id", "obj_id": "object_id", "stat_t": "state_topic"}
DEVICE_ABBREVIATIONS = {"ids": "identifiers", "name": "name", "mf": "manufacturer", "mdl": "model", "sw": "sw_version",
                        "hw": "hw_version", "sn": "serial_number", "cu": "configuration_url", "sa": "suggested_area"}
ORIGIN_ABBREVIATIONS = {"name": "name", "sw": "sw_version", "url": "support_url"}
DEVICE_DISCOVERY_KEYS = {"device", "components", "origin", "availability", "availability_mode", "availability_template",
                         "availability_topic", "payload_available", "payload_not_available", "state_topic",
                         "command_topic", "message_expiry_interval", "qos", "encoding"}
ENTITY_PLATFORMS = {"binary_sensor", "sensor", "event", "image"}  # the ones used here; all are entity platforms
SENSOR_STATE_CLASSES = {"measurement", "measurement_angle", "total", "total_increasing"}
ENTITY_CATEGORIES = {"config", "diagnostic"}
ENTITY_ID = re.compile(r"^(?!.+__)(?!_)[\da-z_]+(?<!_)\.(?!_)[\da-z_]+(?<!_)$")
OBJECT_ID = re.compile(r"^(?!_)[\da-z_]+(?<!_)$")

DEVICE = AgentDevice("Garden-Cam.1", "edge/Garden-Cam.1", "0.1.0", state_interval_s=5.0,
                     support_url="https://example.org/edge-agent/help")
DOOR = PipelineEntities("front-door", "detection", ("person", "car"), (ZoneEntities("driveway", ("car",)),))
DIGITS = PipelineEntities("digits", "classification")


def expand(payload: dict) -> dict:
    """What discovery.py does before validating: replace the abbreviations (device-level, then components)."""
    full = {ABBREVIATIONS.get(k, k): v for k, v in payload.items()}
    full["device"] = {DEVICE_ABBREVIATIONS.get(k, k): v for k, v in full["device"].items()}
    full["origin"] = {ORIGIN_ABBREVIATIONS.get(k, k): v for k, v in full["origin"].items()}
    full["components"] = {cid: {ABBREVIATIONS.get(k, k): v for k, v in c.items()} for cid, c in full["components"].items()}
    return full


def validate(topic: str, payload: dict, discovery_prefix: str = "homeassistant") -> dict:
    """Fail (AssertionError) where Home Assistant would reject or misread the message; the expanded payload."""
    assert topic.startswith(discovery_prefix + "/")
    match = TOPIC_MATCHER.fullmatch(topic[len(discovery_prefix) + 1:])
    assert match and match["component"] == "device", topic
    full = expand(payload)
    assert set(full) <= DEVICE_DISCOVERY_KEYS, set(full) - DEVICE_DISCOVERY_KEYS
    device, origin, components = full["device"], full["origin"], full["components"]
    assert device["identifiers"] and all(isinstance(i, str) for i in device["identifiers"])
    assert isinstance(origin["name"], str) and origin["name"]
    assert set(origin) <= {"name", "sw_version", "support_url"}
    assert "support_url" not in origin or re.match(r"^https?://[^\s/]+", origin["support_url"])
    assert not ("availability" in full and "availability_topic" in full)  # vol.Exclusive
    assert full.get("qos", 0) in (0, 1, 2)
    unique_ids = []
    for cid, c in components.items():
        assert isinstance(cid, str) and c["platform"] in ENTITY_PLATFORMS, cid
        if len(c) == 1:
            continue  # a removal
        assert isinstance(c.get("unique_id"), str) and c["unique_id"], cid  # check_unique_id
        unique_ids.append(c["unique_id"])
        assert ENTITY_ID.match(c["default_entity_id"]) and c["default_entity_id"].split(".")[0] == c["platform"], cid
        assert OBJECT_ID.match(c["object_id"]) and c["default_entity_id"].split(".")[1] == c["object_id"], cid
        assert "device" not in c and "origin" not in c  # only at device level
        if c["platform"] == "image":
            assert ("image_topic" in c) != ("url_topic" in c), cid  # vol.Exclusive + validate_topic_required
            assert "content_type" not in c or "url_topic" not in c, cid
            assert not any(ch in c["image_topic"] for ch in "+#") and "state_topic" not in c, cid
        else:
            assert "state_topic" in c and not any(ch in c["state_topic"] for ch in "+#"), cid  # MQTT_RO_SCHEMA
        assert c.get("entity_category", "diagnostic") in ENTITY_CATEGORIES
        if c["platform"] == "sensor":
            assert c.get("state_class", "measurement") in SENSOR_STATE_CLASSES
            assert c.get("entity_category") != "config"  # sensors cannot be config entities
            assert "expire_after" not in c or (isinstance(c["expire_after"], int) and c["expire_after"] > 0)
        if c["platform"] == "binary_sensor":
            assert c.get("device_class") in (None, "occupancy", "motion", "presence")
        if c["platform"] == "event":
            assert c["event_types"] and all(isinstance(t, str) for t in c["event_types"])
        if "json_attributes_topic" in c:
            assert not any(ch in c["json_attributes_topic"] for ch in "+#")
    assert len(unique_ids) == len(set(unique_ids))
    entity_ids = [c["default_entity_id"] for c in components.values() if len(c) > 1]
    assert len(entity_ids) == len(set(entity_ids))
    return full


def render(template: str, payload: str) -> str:
    """Home Assistant's value template rendering: `value` the payload, `value_json` it parsed."""
    env = ImmutableSandboxedEnvironment()
    env.filters["to_json"] = lambda obj: json.dumps(obj)
    try:
        value_json = json.loads(payload)
    except ValueError:
        value_json = None
    return env.from_string(template).render(value=payload, value_json=value_json).strip()


def components_named(full: dict) -> dict:
    return full["components"]


def test_the_device_message_passes_home_assistants_rules():
    payload = discovery_payload(DEVICE, [DOOR, DIGITS])
    full = validate(discovery_topic("homeassistant", DEVICE), payload)
    assert set(payload) >= {"dev", "o", "cmps"}  # the abbreviated names the issue asks for
    assert full["origin"] == {"name": "edge-agent", "sw_version": "0.1.0", "support_url": "https://example.org/edge-agent/help"}
    assert full["availability_topic"] == "edge/Garden-Cam.1/status"
    assert discovery_topic("homeassistant", DEVICE) == "homeassistant/device/edge_agent_garden_cam_1/config"


def test_entities_of_a_detection_and_a_classification_pipeline():
    c = components_named(validate(discovery_topic("homeassistant", DEVICE), discovery_payload(DEVICE, [DOOR, DIGITS])))
    counts = sorted(cid for cid, v in c.items() if cid.endswith("_count"))
    assert counts == ["front_door_all_count", "front_door_car_count", "front_door_driveway_all_count",
                      "front_door_driveway_car_count", "front_door_person_count"]
    assert c["front_door_person_count"]["state_topic"] == "edge/Garden-Cam.1/front-door/count/person"
    assert c["front_door_person_count"]["state_class"] == "measurement"
    assert c["front_door_driveway_car_occupancy"]["device_class"] == "occupancy"
    assert c["front_door_driveway_car_occupancy"]["state_topic"] == "edge/Garden-Cam.1/front-door/driveway/count/car"
    assert c["front_door_person_count"]["default_entity_id"] == "sensor.garden_cam_1_front_door_person_count"
    assert c["front_door_events"]["event_types"] == ["new", "update", "end"]
    assert c["digits_events"]["event_types"] == ["change"]
    assert c["digits_label"]["json_attributes_topic"] == "edge/Garden-Cam.1/digits/label/attributes"
    diagnostics = {cid for cid, v in c.items() if v.get("entity_category") == "diagnostic"}
    assert diagnostics == {f"{p}_{d}" for p in ("front_door", "digits")
                           for d in ("fps", "inference_ms", "frames_dropped", "source", "model")}
    assert all(c[d]["expire_after"] == 60 for d in diagnostics)  # 3 state intervals, at least a minute
    assert not any("expire_after" in v for cid, v in c.items() if cid not in diagnostics)  # counts only change on events


def test_templates_render_what_home_assistant_needs():
    c = components_named(expand(discovery_payload(DEVICE, [DOOR, DIGITS])))
    occupancy = c["front_door_person_occupancy"]["value_template"]
    assert [render(occupancy, v) for v in ("0", "1", "3")] == ["OFF", "ON", "ON"]
    event = json.dumps({"type": "new", "track_id": 4, "label": "person", "score": 0.9, "zones": ["driveway"]})
    rendered = json.loads(render(c["front_door_events"]["value_template"], event))
    assert rendered["event_type"] == "new" and rendered["event_type"] in c["front_door_events"]["event_types"]
    assert rendered["track_id"] == 4 and rendered["zones"] == ["driveway"]  # the rest become attributes
    assert render(c["digits_label"]["value_template"], "7") == "7"
    assert render(c["digits_label"]["value_template"], "") == "None"  # cleared at start: no value
    state = json.dumps({"pipelines": {"front-door": {"fps": 12.5, "inference_ms": 31.2, "frames_dropped": 3,
                                                     "source": {"state": "live"}, "model": {"name": "det", "version": "2"}},
                                      "digits": {"status": "failed", "error": "no camera"}}})
    assert render(c["front_door_fps"]["value_template"], state) == "12.5"
    assert render(c["front_door_inference_ms"]["value_template"], state) == "31.2"
    assert render(c["front_door_frames_dropped"]["value_template"], state) == "3"
    assert render(c["front_door_source"]["value_template"], state) == "live"
    assert render(c["front_door_model"]["value_template"], state) == "det 2"
    assert json.loads(render(c["front_door_model"]["json_attributes_template"], state)) == {"name": "det", "version": "2"}
    # a pipeline that failed to start has only status and error: its diagnostics still render
    assert render(c["digits_fps"]["value_template"], state) == "0"
    assert render(c["digits_source"]["value_template"], state) == "failed"


def test_a_removed_pipeline_is_sent_as_platform_only_components():
    before = discovery_payload(DEVICE, [DOOR, DIGITS])
    after = discovery_payload(DEVICE, [DIGITS], removed={k: v for k, v in platforms_of(before).items()
                                                         if k not in platforms_of(discovery_payload(DEVICE, [DIGITS]))})
    full = validate(discovery_topic("homeassistant", DEVICE), after)
    removals = {cid: c for cid, c in full["components"].items() if len(c) == 1}
    assert removals and all(cid.startswith("front_door_") for cid in removals)
    assert removals["front_door_person_occupancy"] == {"platform": "binary_sensor"}
    assert removals["front_door_events"] == {"platform": "event"}
    assert set(platforms_of(after)) == set(platforms_of(discovery_payload(DEVICE, [DIGITS])))


def test_names_that_are_not_entity_ids_become_slugs():
    odd = PipelineEntities("Entrée-2", "detection", ("traffic light", "hot/dog"), ())
    c = components_named(validate(discovery_topic("homeassistant", DEVICE), discovery_payload(DEVICE, [odd])))
    assert c["entree_2_traffic_light_count"]["state_topic"] == "edge/Garden-Cam.1/Entrée-2/count/traffic_light"
    assert c["entree_2_hot_dog_count"]["state_topic"] == "edge/Garden-Cam.1/Entrée-2/count/hot_dog"


def test_a_pipeline_without_events_has_diagnostics_and_its_snapshot_only():
    quiet = PipelineEntities("door", "detection", ("person",), (), events=False)
    c = components_named(validate(discovery_topic("homeassistant", DEVICE), discovery_payload(DEVICE, [quiet])))
    assert set(c) == {"door_fps", "door_inference_ms", "door_frames_dropped", "door_source", "door_model", "door_snapshot"}


def test_snapshots_are_image_entities_on_the_snapshot_topics():
    c = components_named(validate(discovery_topic("homeassistant", DEVICE), discovery_payload(DEVICE, [DOOR, DIGITS])))
    images = {cid: v for cid, v in c.items() if v["platform"] == "image"}
    assert set(images) == {"front_door_snapshot", "front_door_person_snapshot", "front_door_car_snapshot",
                           "digits_snapshot"}  # per tracked label for detection, one per pipeline
    assert images["front_door_snapshot"]["image_topic"] == "edge/Garden-Cam.1/front-door/snapshot"
    assert images["front_door_person_snapshot"]["image_topic"] == "edge/Garden-Cam.1/front-door/person/snapshot"
    assert all(v["content_type"] == "image/jpeg" for v in images.values())
    assert images["digits_snapshot"]["default_entity_id"] == "image.garden_cam_1_digits_snapshot"
    plain = PipelineEntities("door", "detection", ("person",), (), label_snapshots=False)
    assert "door_person_snapshot" not in discovery_payload(DEVICE, [plain])["cmps"]
    serial_only = PipelineEntities("door", "detection", ("person",), (), snapshots=False)
    assert not any(v["p"] == "image" for v in discovery_payload(DEVICE, [serial_only])["cmps"].values())


@pytest.mark.parametrize("prefix", ["homeassistant", "ha/discovery"])
def test_custom_discovery_prefixes(prefix):
    validate(discovery_topic(prefix, DEVICE), discovery_payload(DEVICE, [DOOR]), discovery_prefix=prefix)
