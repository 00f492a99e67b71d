"""The decoding keys of a pipeline (task, iou, thresholds, box_units, preprocess.pad): read, and every bad
value named by its key path. ([anchors] and [box_decoder] are in test_decode_anchor_ssd.py.)"""

from __future__ import annotations

import pytest

from edge_agent.config import ConfigError, parse_config


@pytest.mark.parametrize("keys, problem", [
    ({"iou": 1.5}, "pipelines.p.iou: expected a number from 0.0 to 1.0"),
    ({"thresholds": {"person": "high"}}, "pipelines.p.thresholds.person: expected a number from 0.0 to 1.0"),
    ({"thresholds": 0.5}, "pipelines.p.thresholds: expected a table"),
    ({"box_units": "inches"}, "pipelines.p.box_units: expected one of 'auto', 'normalized', 'pixels'"),
    ({"preprocess": {"pad": 300}}, "pipelines.p.preprocess.pad: expected a whole number from 0 to 255"),
    ({"task": "tracking"}, "'pose', 'segmentation'"),
])
def test_bad_decoding_keys_name_the_key(keys, problem):
    with pytest.raises(ConfigError) as info:
        parse_config({"pipelines": {"p": {"source": "0", "model": "m.tflite", **keys}}})
    assert any(problem in p for p in info.value.problems), info.value.problems


def test_decoding_keys_are_read():
    config = parse_config({"pipelines": {"p": {"source": "0", "model": "m.tflite", "task": "pose", "iou": 0.6, "box_units": "pixels",
                                               "thresholds": {"person": 0.7, "car": 0.4}, "preprocess": {"pad": 114}}}}).pipelines[0]
    assert (config.task, config.iou, config.box_units) == ("pose", 0.6, "pixels")
    assert config.thresholds == (("person", 0.7), ("car", 0.4)) and config.preprocess.pad == 114
    assert "pad" in config.preprocess_keys


def test_a_change_of_decoding_keys_swaps_the_model_without_restarting_the_pipeline():
    from edge_agent.service.reload import plan_reload

    def agent(**keys):
        return parse_config({"pipelines": {"p": {"source": "0", "model": "m.tflite", **keys}}})

    for keys in ({"iou": 0.6}, {"thresholds": {"car": 0.4}}, {"box_units": "pixels"}, {"anchors": {"preset": "mediapipe-face-short-range"}}):
        plan = plan_reload(agent(), agent(**keys))
        assert [p.name for p in plan.swap_model] == ["p"] and not plan.restart, keys
