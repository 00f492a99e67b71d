"""YOLO decoding on real .tflite models whose last layer plants known boxes (models/make_layout_models.py):
v8, v8 transposed, v5, end-to-end; float and full-int8; through letterbox at hand-computed frame
coordinates; NMS, thresholds per label, max_detections; and the class-count error."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.config import PreprocessOptions
from decode_support import BLUE, RED, active_model, cxcywh_to_yxyx, decode_frame, input_mean, model_to_frame, planted, solid_frame
from support import MODELS, RUNTIMES
from edge_agent.decode import ClassCountError, DecodeError

FRAME_H, FRAME_W = 120, 160  # 4:3, letterboxed into the 64x64 input: 8 rows of padding above and below


def expected_detections(score_of_red_box: float, threshold: float = 0.5, dropped=(41,)) -> list[tuple[int, float, np.ndarray]]:
    """(class, score, frame box) of the planted boxes that survive threshold and NMS, best first."""
    kept = []
    for index, class_id, cx, cy, w, h, score in planted.YOLO_BOXES:
        score = score_of_red_box if score is None else score
        if index in dropped or score < threshold:
            continue
        kept.append((class_id, score, model_to_frame(cxcywh_to_yxyx(cx, cy, w, h), FRAME_H, FRAME_W)))
    return sorted(kept, key=lambda item: -item[1])


def assert_detections(decoded, expected, score_tolerance: float = 1e-5, box_tolerance: float = 1e-5):
    got = [(d.id, d.score, np.array(d.box)) for d in decoded.detections]
    assert [g[0] for g in got] == [e[0] for e in expected], decoded.detections
    for (_, score, box), (_, want_score, want_box) in zip(got, expected):
        assert score == pytest.approx(want_score, abs=score_tolerance)
        np.testing.assert_allclose(box, want_box, atol=box_tolerance)


ULTRALYTICS_PAD = 114  # models with Ultralytics metadata get letterbox padding 114 unless configured
# the red mean of a red 160x120 frame letterboxed into 64x64: 48 of the 64 rows are frame, 16 padding
RED_MEAN = input_mean(FRAME_H, FRAME_W, 1.0, pad=ULTRALYTICS_PAD)
BLUE_MEAN = input_mean(FRAME_H, FRAME_W, 0.0, pad=ULTRALYTICS_PAD)  # the grey padding has red in it too
# name: (layout, factor of the red box's score, padding)
FLOAT_MODELS = {
    "yolov8_float": ("yolo-v8", 1.0, ULTRALYTICS_PAD),
    "yolov8_transposed": ("yolo-v8", 1.0, 0),
    "yolov5_float": ("yolo-v5", planted.V5_OBJECTNESS, 0),  # score = objectness x class score
    "yolo_end2end": ("yolo-end2end", 1.0, ULTRALYTICS_PAD),
    "yolo_end2end_nchw_pixels": ("yolo-end2end", 1.0, ULTRALYTICS_PAD),  # boxes in input pixels
}


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("name", list(FLOAT_MODELS))
def test_planted_boxes_come_back_at_frame_coordinates_through_letterbox(name, runtime):
    layout, red_factor, pad = FLOAT_MODELS[name]
    # Ultralytics models get letterbox and its padding from their metadata; the others are told
    options = PreprocessOptions() if pad == ULTRALYTICS_PAD else PreprocessOptions(resize="letterbox")
    active = active_model(name, runtime=runtime, preprocess=options)
    assert active.task == "detection" and active.layout.layout == layout
    assert active.preprocessor.pad == pad
    red = decode_frame(active, solid_frame(FRAME_H, FRAME_W, RED))
    assert_detections(red, expected_detections(input_mean(FRAME_H, FRAME_W, 1.0, pad) * red_factor), box_tolerance=2e-5)
    blue = decode_frame(active, solid_frame(FRAME_H, FRAME_W, BLUE))
    assert_detections(blue, expected_detections(input_mean(FRAME_H, FRAME_W, 0.0, pad) * red_factor), box_tolerance=2e-5)
    assert all(d.label == (planted.NAMES[d.id] if name != "yolov5_float" else str(d.id)) for d in red.detections)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_full_integer_nchw_model_decodes_within_a_quantisation_step(runtime):
    """int8 in (NCHW [1, 3, 64, 64]), int8 out: the red box's score follows the red mean, boxes land at
    the same frame coordinates within one step of the output's scale."""
    active = active_model("yolov8_nchw_int8", runtime=runtime, preprocess=PreprocessOptions())
    output = active.model.outputs[0]
    assert active.model.input.shape == (1, 3, 64, 64) and active.model.input.dtype == np.int8
    assert output.dtype == np.int8 and active.layout.layout == "yolo-v8" and "normalised" in active.layout.why
    step = output.scale * 1.5  # one output step, plus the input's rounding
    for frame, red_mean in ((solid_frame(FRAME_H, FRAME_W, RED), RED_MEAN), (solid_frame(FRAME_H, FRAME_W, BLUE), BLUE_MEAN)):
        assert_detections(decode_frame(active, frame), expected_detections(red_mean), score_tolerance=2 * step, box_tolerance=2 * step)


def test_pixel_boxes_are_recognised_from_the_model():
    nchw = active_model("yolo_end2end_nchw_pixels")
    assert nchw.layout.params["yolo"].pixel_boxes and "input pixels" in nchw.layout.why
    assert not active_model("yolo_end2end").layout.params["yolo"].pixel_boxes


def test_configured_preprocessing_wins_over_what_the_model_says():
    active = active_model("yolov8_float", preprocess=PreprocessOptions(resize="stretch", pad=0),
                          preprocess_keys=("resize", "pad"))
    assert active.preprocessor.options.resize == "stretch" and active.preprocessor.pad == 0


def test_labels_come_from_ultralytics_metadata_and_from_the_attached_file():
    assert active_model("yolov8_float").labels == list(planted.NAMES)  # metadata.json names
    assert active_model("yolov8_transposed").labels == list(planted.NAMES)  # labels.txt
    assert active_model("yolov5_float").labels is None


def test_class_aware_nms_and_its_iou():
    # box 41 overlaps box 40 of the same class: gone at the default iou 0.45, kept when iou allows it
    strict = decode_frame(active_model("yolov8_float"), solid_frame(FRAME_H, FRAME_W, BLUE))
    assert [d.score for d in strict.detections] == pytest.approx([0.9, 0.7])
    loose = decode_frame(active_model("yolov8_float", iou=0.95), solid_frame(FRAME_H, FRAME_W, BLUE))
    assert_detections(loose, expected_detections(0.0, dropped=()))
    # box 42 sits exactly on box 40 but is another class: class-aware NMS keeps both
    assert {d.label for d in strict.detections} == {"green", "blue"}


def test_thresholds_per_label_and_max_detections():
    frame = solid_frame(FRAME_H, FRAME_W, RED)
    per_label = decode_frame(active_model("yolov8_float", thresholds=(("green", 0.95), ("red", 0.2))), frame)
    assert [d.label for d in per_label.detections] == ["red", "blue", "red"]  # green gone, the 0.3 red box in
    assert [d.score for d in per_label.detections] == pytest.approx([RED_MEAN, 0.7, 0.3])
    assert len(decode_frame(active_model("yolov8_float", max_detections=1), frame).detections) == 1
    low = decode_frame(active_model("yolov8_float", threshold=0.25), frame)
    assert [d.score for d in low.detections] == pytest.approx([0.9, RED_MEAN, 0.7, 0.3])


def test_a_threshold_for_a_label_the_model_does_not_have_is_an_error():
    with pytest.raises(DecodeError, match="'persn' is not one of the model's labels .red, green, blue"):
        active_model("yolov8_float", thresholds=(("persn", 0.5),))


def test_labels_that_do_not_fit_the_class_count_name_both_numbers(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\nd\ne\n")
    with pytest.raises(ClassCountError) as info:
        active_model("yolov8_transposed", labels=str(labels))
    message = str(info.value)
    assert "the labels have 5 entries" in message and "holds 3 classes" in message and "[1, 84, 7]" in message


def test_a_yolo_model_under_a_task_it_cannot_serve_is_a_clear_error():
    with pytest.raises(DecodeError) as info:
        active_model("yolov8_float", task="classification")
    message = str(info.value)
    assert "[[1, 7, 84]]" in message and "classification: one output [1, N]" in message and 'task = "raw"' in message
    raw = active_model("yolov8_float", task="raw")  # raw always works
    assert raw.task == "raw" and decode_frame(raw, solid_frame(FRAME_H, FRAME_W, RED)).outputs[0]["shape"] == [1, 7, 84]


def test_box_units_override_is_honoured():
    # the same planted boxes read as pixels of the 64x64 input become tiny boxes near the origin
    decoded = decode_frame(active_model("yolov8_float", box_units="pixels"), solid_frame(64, 64, BLUE))
    assert decoded.detections and all(max(d.box) < 0.02 for d in decoded.detections)
    assert "box_units" in active_model("yolov8_float", box_units="pixels").layout.why


def test_an_ssd_model_still_decodes_as_before():
    active = active_model("ssd_tiny", preprocess=None)
    assert active.layout.layout == "ssd-postprocess" and active.task == "detection"
    rng = np.random.default_rng(0)
    decoded = decode_frame(active, rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    assert 0 < len(decoded.detections) <= 10 and all(0.5 <= d.score <= 1 for d in decoded.detections)
    assert (MODELS / "ssd_tiny.tflite").exists()


def test_thresholds_per_label_apply_to_ssd_models_too():
    frame = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    everything = decode_frame(active_model("ssd_tiny", preprocess=None, threshold=0.0), frame).detections
    held = decode_frame(active_model("ssd_tiny", preprocess=None, threshold=0.0, thresholds=(("0", 0.8),)), frame).detections
    assert held == tuple(d for d in everything if d.label != "0" or d.score >= 0.8)
    assert len(held) < len(everything) and any(d.label == "0" for d in held)
