"""The interpretation keys (events, zones, per-label filters, publish, [homeassistant]): what they
accept, and a clear error with its key path for each bad input the issue lists."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from edge_agent.config import ConfigError, load_config, parse_config
from edge_agent.interpret import interpreter_for
from support import write_config


def problems_of(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, base_dir=Path("/base"))
    return info.value.problems


def pipeline(**keys) -> dict:
    return {"pipelines": {"door": {"model": "m.tflite", "source": "0", **keys}}}


def test_a_file_with_every_interpretation_key(tmp_path):
    config = load_config(write_config(tmp_path / "agent.toml", """
[homeassistant]
enabled = true
discovery_prefix = "ha"

[pipelines.door]
model = "det.tflite"
source = "0"
labels_file = "labels.txt"
track = ["person", "car"]

[pipelines.door.events]
min_frames = 5
max_disappeared_s = 1.5
update_interval_s = 0

[pipelines.door.labels.person]
threshold = 0.6
min_area = 0.01

[pipelines.door.zones.driveway]
polygon = [[0, 0.5], [1, 0.5], [1, 1], [0, 1]]
labels = ["car"]

[pipelines.door.publish]
predictions = "on_change"
heartbeat_s = 30
"""))
    door = config.pipelines[0]
    assert door.labels == str(tmp_path / "labels.txt") and door.track == ("person", "car")
    assert door.events.min_frames == 5 and door.events.update_interval_s == 0.0
    assert [(f.name, f.threshold, f.min_area) for f in door.label_filters] == [("person", 0.6, 0.01)]
    assert door.zones[0].name == "driveway" and door.zones[0].polygon[1] == (1.0, 0.5) and door.zones[0].labels == ("car",)
    assert door.publish.predictions == "on_change" and door.publish.heartbeat_s == 30.0
    assert config.homeassistant.enabled and config.homeassistant.discovery_prefix == "ha"


def test_defaults_keep_todays_behaviour():
    door = parse_config(pipeline()).pipelines[0]
    assert door.publish.predictions == "every_frame" and door.events.enabled and door.events.min_frames == 3
    assert door.zones == () and door.label_filters == () and door.track == ()
    assert not parse_config(pipeline()).homeassistant.enabled
    assert parse_config(pipeline(labels="l.txt"), base_dir=Path("/base")).pipelines[0].labels == "/base/l.txt"  # the old form still works


@pytest.mark.parametrize("keys, expected", [
    ({"zones": {"z": {"polygon": [[0, 0], [1, 1]]}}}, "pipelines.door.zones.z.polygon: a polygon needs at least 3 points, got 2"),
    ({"zones": {"z": {"polygon": [[0, 0], [1.2, 0], [1, 1]]}}}, "pipelines.door.zones.z.polygon: coordinates are fractions"),
    ({"zones": {"z": {"polygon": [[0, 0], [1, -0.1], [1, 1]]}}}, "pipelines.door.zones.z.polygon: coordinates are fractions"),
    ({"zones": {"z": {"polygon": [0, 0, 1]}}}, "pipelines.door.zones.z.polygon: expected a list of [x, y] points"),
    ({"zones": {"z": {}}}, "pipelines.door.zones.z.polygon: required"),
    ({"zones": {"a b": {"polygon": [[0, 0], [1, 0], [1, 1]]}}}, "pipelines.door.zones.a b: the zone name must not contain"),
    ({"zones": {"z": {"polygon": [[0, 0], [1, 0], [1, 1]], "labels": ["dog"]}}, "track": ["person"]},
     "pipelines.door.zones.z.labels: ['dog'] not in track"),
    ({"events": {"min_frames": 0}}, "pipelines.door.events.min_frames: expected a whole number >= 1, got 0"),
    ({"events": {"min_frames": -2}}, "pipelines.door.events.min_frames: expected a whole number >= 1, got -2"),
    ({"events": {"max_disappeared_s": 0}}, "pipelines.door.events.max_disappeared_s: expected a number"),
    ({"labels": {"person": {"threshold": 1.5}}}, "pipelines.door.labels.person.threshold: expected a number from 0.0 to 1.0"),
    ({"labels": {"person": {"min_area": "big"}}}, "pipelines.door.labels.person.min_area: expected a number"),
    ({"labels": {"person": {"treshold": 0.5}}}, "pipelines.door.labels.person.treshold: unknown key"),
    ({"labels": "l.txt", "labels_file": "m.txt"}, "pipelines.door.labels_file: give the labels file once"),
    ({"publish": {"predictions": "sometimes"}}, "pipelines.door.publish.predictions: expected one of 'every_frame'"),
    ({"track": "person"}, "pipelines.door.track: expected a list of strings"),
])
def test_bad_interpretation_keys_name_their_key(keys, expected):
    problems = problems_of(pipeline(**keys))
    assert any(p.startswith(expected) for p in problems), problems


@pytest.mark.parametrize("prefix", ["home/#", "home/+/x", "home assistant", "", "/ha", "ha/"])
def test_a_discovery_prefix_with_wildcards_is_refused(prefix):
    problems = problems_of({**pipeline(), "homeassistant": {"enabled": True, "discovery_prefix": prefix}})
    assert any(p.startswith("homeassistant.discovery_prefix: ") for p in problems), problems


def test_names_that_collide_after_slugging_are_refused_when_home_assistant_is_on():
    data = {"pipelines": {"front-door": {"model": "m.tflite", "source": "0"},
                          "Front_Door": {"model": "m.tflite", "source": "1"}}}
    parse_config(data)  # without Home Assistant no entity ids are made: fine
    problems = problems_of({**data, "homeassistant": {"enabled": True}})
    assert problems == ["pipelines: 'front-door' and 'Front_Door' give the same Home Assistant entity id ('front_door'): "
                        "rename one"]
    zones = pipeline(zones={"Gate-1": {"polygon": [[0, 0], [1, 0], [1, 1]]}, "gate_1": {"polygon": [[0, 0], [1, 0], [0, 1]]}})
    assert any(p.startswith("pipelines.door.zones: 'Gate-1' and 'gate_1'")
               for p in problems_of({**zones, "homeassistant": {"enabled": True}}))
    labels = pipeline(track=["traffic light", "traffic-light"])
    assert any(p.startswith("pipelines.door.track: 'traffic light' and 'traffic-light'")
               for p in problems_of({**labels, "homeassistant": {"enabled": True}}))


def test_a_label_the_model_does_not_have_is_a_warning_naming_its_labels(caplog):
    config = parse_config(pipeline(track=["person", "prson"], labels={"cat": {"threshold": 0.7}},
                                   zones={"z": {"polygon": [[0, 0], [1, 0], [1, 1]], "labels": ["prson"]}})).pipelines[0]
    with caplog.at_level(logging.WARNING, logger="edge_agent.interpret.stage"):
        interpreter_for(config, "detection", ["person", "car", "dog"], 0.5)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 3
    assert ("pipeline door: pipelines.door.track[1] names label 'prson', which the model does not have; "
            "its labels are: person, car, dog") in warnings
    assert any("pipelines.door.labels.cat names label 'cat'" in w for w in warnings)
    assert any("pipelines.door.zones.z.labels[0] names label 'prson'" in w for w in warnings)


def test_check_config_warns_about_labels_the_model_does_not_have(tmp_path):
    import subprocess
    import sys

    from support import MODELS, REPO

    config = write_config(tmp_path / "agent.toml", f"""
[pipelines.door]
model = "{MODELS / 'box_finder.tflite'}"
labels_file = "{MODELS / 'box_finder.labels.txt'}"
source = "0"
track = ["person", "bike"]
[pipelines.door.labels.cat]
threshold = 0.7
""")
    result = subprocess.run([sys.executable, "-m", "edge_agent", "check-config", str(config)], capture_output=True,
                            text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    assert ("warning: pipelines.door.track[1] names label 'bike', which the model does not have; "
            "its labels are: person, car, dog") in result.stdout
    assert "warning: pipelines.door.labels.cat names label 'cat'" in result.stdout
