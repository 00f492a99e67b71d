"""The decoding keys of a pipeline (task, iou, [labels.LABEL] min_score and its older spelling thresholds,
box_units, preprocess.pad): read, and every bad value named by its key path. ([anchors] and [box_decoder]
are in test_decode_anchor_ssd.py.)"""

from __future__ import annotations

import pytest

from decode_support import RED, active_model, decode_frame, solid_frame
from edge_agent.config import ConfigError, parse_config
from edge_agent.decode import DecodeError
from edge_agent.interpret import interpreter_for

FRAME_H, FRAME_W = 120, 160  # as test_decode_yolo.py: letterboxed into the 64x64 input


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


# ---------------------------------------------------------------------------- per-label min_score

def detection_pipeline(**keys):
    return parse_config({"pipelines": {"p": {"source": "0", "model": "m.tflite", **keys}}}).pipelines[0]


def test_min_score_per_label_is_the_decoders_and_thresholds_is_its_older_spelling():
    new = detection_pipeline(labels={"green": {"min_score": 0.95, "threshold": 0.97}, "red": {"min_score": 0.2}})
    old = detection_pipeline(thresholds={"green": 0.95, "red": 0.2})
    assert new.min_scores == old.min_scores == (("green", 0.95), ("red", 0.2))
    assert [(f.name, f.min_score, f.threshold) for f in new.label_filters] == [("green", 0.95, 0.97), ("red", 0.2, None)]
    mixed = detection_pipeline(labels={"green": {"min_score": 0.95}}, thresholds={"red": 0.2})  # one label each: fine
    assert dict(mixed.min_scores) == {"green": 0.95, "red": 0.2}


def test_a_label_given_min_score_and_thresholds_is_an_error_naming_both_keys():
    with pytest.raises(ConfigError) as info:
        detection_pipeline(labels={"car": {"min_score": 0.4}}, thresholds={"car": 0.5, "person": 0.7})
    problems = [p for p in info.value.problems if "car" in p]
    assert len(problems) == 1 and problems[0].startswith("pipelines.p.thresholds.car: ") and \
        "labels.car.min_score" in problems[0], info.value.problems


@pytest.mark.parametrize("value, problem", [
    (1.5, "pipelines.p.labels.car.min_score: expected a number from 0.0 to 1.0"),
    ("high", "pipelines.p.labels.car.min_score: expected a number"),
])
def test_bad_min_scores_name_their_key(value, problem):
    with pytest.raises(ConfigError) as info:
        detection_pipeline(labels={"car": {"min_score": value}})
    assert any(p.startswith(problem) for p in info.value.problems), info.value.problems


def test_min_score_drops_detections_in_the_decoder_as_thresholds_did():
    """The planted YOLO boxes (make_layout_models.py): a green box at 0.9 goes, a red one at 0.3 comes."""
    frame = solid_frame(FRAME_H, FRAME_W, RED)
    tables = detection_pipeline(labels={"green": {"min_score": 0.95}, "red": {"min_score": 0.2}})
    by_table = decode_frame(active_model("yolov8_float", label_filters=tables.label_filters), frame)
    by_alias = decode_frame(active_model("yolov8_float", thresholds=(("green", 0.95), ("red", 0.2))), frame)
    assert [d.label for d in by_table.detections] == [d.label for d in by_alias.detections] == ["red", "blue", "red"]
    assert [d.score for d in by_table.detections] == [d.score for d in by_alias.detections]
    with pytest.raises(DecodeError, match=r"labels\.persn\.min_score .*'persn' is not one of the model's labels"):
        active_model("yolov8_float", label_filters=detection_pipeline(labels={"persn": {"min_score": 0.5}}).label_filters)


def test_a_labels_new_threshold_defaults_to_its_min_score():
    """Lowering a label's min_score below the pipeline's threshold gives its objects events too."""
    for keys in ({"labels": {"car": {"min_score": 0.3}}}, {"thresholds": {"car": 0.3}}):
        interpreter = interpreter_for(detection_pipeline(threshold=0.6, **keys), "detection", ["person", "car"], 0.5)
        assert interpreter.filter.rule("car").threshold == 0.3, keys
        assert interpreter.filter.rule("person").threshold == 0.6, keys
    explicit = interpreter_for(detection_pipeline(threshold=0.6, labels={"car": {"min_score": 0.3, "threshold": 0.8}}),
                               "detection", ["person", "car"], 0.5)
    assert explicit.filter.rule("car").threshold == 0.8
