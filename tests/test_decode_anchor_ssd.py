"""MediaPipe anchor-SSD heads: anchors generated as SsdAnchorsCalculator does, boxes and keypoints decoded as
TensorsToDetectionsCalculator does, weighted NMS; checked on MediaPipe's own face detector (from the
mediapipe wheel) on a real photo, straight and letterboxed; and the bad-configuration errors."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
from skimage import data

from decode_support import active_model, decode_frame
from support import RUNTIMES
from edge_agent.config import ConfigError, PreprocessOptions, parse_config, resolve_anchor_preset, resolve_anchor_ssd
from edge_agent.decode import DecodeError
from edge_agent.decode.anchors import generate_anchors
from edge_agent.decode.layouts import match_layout
from edge_agent.service.decoding import describe_model

# The astronaut's face in skimage's 512x512 photo, measured by hand: brows to chin, cheek to cheek
FACE = (0.18, 0.37, 0.32, 0.51)  # ymin, xmin, ymax, xmax
FACE_KEYPOINTS = ("right_eye", "left_eye", "nose_tip", "mouth_center", "right_ear_tragion", "left_ear_tragion")


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


def test_preset_anchor_counts_and_positions():
    short, _ = resolve_anchor_preset("mediapipe-face-short-range")
    anchors = generate_anchors(short, 128, 128)
    assert anchors.shape == (896, 4)  # 16x16 cells x 2 (stride 8) + 8x8 cells x 6 (three stride-16 layers merged)
    np.testing.assert_allclose(anchors[0], [0.5 / 16, 0.5 / 16, 1, 1])
    np.testing.assert_allclose(anchors[1], anchors[0])  # the interpolated anchor of the same cell
    np.testing.assert_allclose(anchors[2], [0.5 / 16, 1.5 / 16, 1, 1])
    np.testing.assert_allclose(anchors[512], [0.5 / 8, 0.5 / 8, 1, 1])
    np.testing.assert_allclose(anchors[512 + 6], [0.5 / 8, 1.5 / 8, 1, 1])
    full, _ = resolve_anchor_preset("mediapipe-face-full-range")
    assert generate_anchors(full, 192, 192).shape == (2304, 4)  # 48x48, one anchor each


def test_anchor_sizes_when_not_fixed():
    options = dataclasses.replace(resolve_anchor_preset("mediapipe-face-short-range")[0], fixed_anchor_size=False,
                                  num_layers=2, strides=(8, 16), aspect_ratios=(1.0, 2.0), min_scale=0.2, max_scale=0.6,
                                  input_size_height=None, input_size_width=None)  # None: the model's size
    anchors = generate_anchors(options, 64, 64)
    assert anchors.shape == (8 * 8 * 3 + 4 * 4 * 3, 4)
    # layer 0: scale 0.2 at ratios 1 and 2, then sqrt(0.2 x 0.6) at ratio 1 (h = s / sqrt(r), w = s x sqrt(r))
    np.testing.assert_allclose(anchors[0, 2:], [0.2, 0.2], rtol=1e-6)
    np.testing.assert_allclose(anchors[1, 2:], [0.2 / np.sqrt(2), 0.2 * np.sqrt(2)], rtol=1e-6)
    np.testing.assert_allclose(anchors[2, 2:], [np.sqrt(0.12)] * 2, rtol=1e-6)
    np.testing.assert_allclose(anchors[8 * 8 * 3 + 2, 2:], [np.sqrt(0.6)] * 2, rtol=1e-6)  # last layer: next scale 1.0


def assert_one_face_covering(detections, face, tolerance: float = 0.02):
    (detection,) = detections
    ymin, xmin, ymax, xmax = detection.box
    assert detection.label == "face" and detection.score > 0.8
    assert ymin <= face[0] + tolerance and xmin <= face[1] + tolerance and ymax >= face[2] - tolerance and xmax >= face[3] - tolerance
    area, face_area = (ymax - ymin) * (xmax - xmin), (face[2] - face[0]) * (face[3] - face[1])
    assert area < 3 * face_area, "the box covers the face, not the photo"
    points = {k.name: k for k in detection.keypoints}
    assert tuple(points) == FACE_KEYPOINTS
    edge = 0.01  # BlazeFace puts the ear tragions on the box's sides
    for point in detection.keypoints:
        assert xmin - edge <= point.x <= xmax + edge and ymin - edge <= point.y <= ymax + edge and point.score is None, point
    # the photo's left is the astronaut's right; eyes above the nose above the mouth
    assert points["right_eye"].x < points["nose_tip"].x < points["left_eye"].x
    assert max(points["right_eye"].y, points["left_eye"].y) < points["nose_tip"].y < points["mouth_center"].y
    return detection


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_mediapipe_face_detector_finds_the_astronaut(runtime, astronaut):
    active = active_model("face_detection_short_range", runtime=runtime, preprocess=PreprocessOptions())
    assert active.layout.layout == "anchor-ssd" and "mediapipe-face-short-range" in active.layout.why
    assert active.preprocessor.options.resize == "letterbox" and active.preprocessor.options.mean == (127.5,)
    assert_one_face_covering(decode_frame(active, astronaut).detections, FACE)
    assert decode_frame(active, np.full((512, 512, 3), 128, np.uint8)).detections == ()


def test_letterboxed_face_lands_at_frame_coordinates(astronaut):
    """The photo inside a wider frame: the face must come back where it is in the frame."""
    frame = np.full((512, 640, 3), 40, np.uint8)  # wider: the letterbox pads above and below
    frame[:, 100:612] = astronaut
    face = (FACE[0], (FACE[1] * 512 + 100) / 640, FACE[2], (FACE[3] * 512 + 100) / 640)
    active = active_model("face_detection_short_range", preprocess=PreprocessOptions())
    straight = assert_one_face_covering(decode_frame(active, astronaut).detections, FACE)
    moved = assert_one_face_covering(decode_frame(active, frame).detections, face)
    # the same face, so the same box once mapped back into the photo (within a few model pixels)
    back = ((moved.box[1] * 640 - 100) / 512, (moved.box[3] * 640 - 100) / 512)
    assert back == pytest.approx((straight.box[1], straight.box[3]), abs=0.03)


def test_plain_nms_and_payload_keypoints(astronaut):
    config = parse_config({"pipelines": {"p": {"source": "0", "model": "m.tflite", "anchors": {"preset": "mediapipe-face-short-range"},
                                                "box_decoder": {"nms": "plain"}}}}).pipelines[0]
    active = active_model("face_detection_short_range", preprocess=PreprocessOptions(), anchors=config.anchors,
                          box_decoder=config.box_decoder)
    detection = assert_one_face_covering(decode_frame(active, astronaut).detections, FACE)
    payload = detection.to_payload()
    assert [k["name"] for k in payload["keypoints"]] == list(FACE_KEYPOINTS)
    assert set(payload["keypoints"][0]) == {"name", "x", "y"}


def anchors_config(**tables) -> tuple:
    config = parse_config({"pipelines": {"p": {"source": "0", "model": "m.tflite", **tables}}}).pipelines[0]
    return config.anchors, config.box_decoder


def test_anchor_count_that_does_not_fit_the_model_names_both_numbers():
    anchors, box_decoder = anchors_config(anchors={"preset": "mediapipe-face-full-range"})
    with pytest.raises(DecodeError) as info:
        active_model("face_detection_short_range", anchors=anchors, box_decoder=box_decoder)
    assert "give 2304 boxes" in str(info.value) and "hold 896" in str(info.value)
    anchors, box_decoder = anchors_config(anchors={"preset": "mediapipe-face-short-range", "strides": [8, 16, 16, 32]})
    # 16x16x2 (stride 8) + 8x8x4 (two stride-16 layers) + 4x4x2 (stride 32) = 800
    with pytest.raises(DecodeError, match="give 800 boxes .* hold 896"):
        active_model("face_detection_short_range", anchors=anchors, box_decoder=box_decoder)


def test_num_coords_that_does_not_fit_the_model_is_an_error():
    anchors, box_decoder = anchors_config(anchors={"preset": "mediapipe-face-short-range"},
                                          box_decoder={"num_coords": 14, "num_keypoints": 5, "keypoint_names": list("abcde")})
    with pytest.raises(DecodeError, match="num_coords is 14 .* hold 16 values per box"):
        active_model("face_detection_short_range", anchors=anchors, box_decoder=box_decoder)


def test_an_anchor_head_without_anchors_explains_what_to_set():
    # the face model's description at another input size: no preset fits; task = "detection" says what to set
    description = dataclasses.replace(describe_model(active_model("face_detection_short_range").model), input_height=160)
    with pytest.raises(DecodeError) as info:
        match_layout(description, "detection")
    assert "no preset fits" in str(info.value) and "[pipelines.NAME.anchors]" in str(info.value)
    assert match_layout(description, "auto").layout == "raw"


@pytest.mark.parametrize("tables, problem", [
    ({"anchors": {"num_layers": 2, "strides": [8]}}, "anchors.strides: 1 strides for num_layers = 2"),
    ({"anchors": {"preset": "mediapipe-face-tiny"}}, "anchors.preset: expected one of 'mediapipe-face-short-range'"),
    ({"box_decoder": {"num_coords": 16}}, "box_decoder: needs a [pipelines.p.anchors] table"),
    ({"anchors": {"preset": "mediapipe-face-short-range"}, "box_decoder": {"num_keypoints": 5}},
     "num_coords: 16 must be 4 + num_keypoints (5) x num_values_per_keypoint (2)"),
    ({"anchors": {"preset": "mediapipe-face-short-range", "strides": "8"}}, "anchors.strides: expected a list of whole numbers"),
    ({"anchors": {"preset": "mediapipe-face-short-range", "aspect_ratio": [1.0]}}, "anchors.aspect_ratio: unknown key"),
    ({"anchors": {"preset": "mediapipe-face-short-range"}, "box_decoder": {"nms": "soft"}}, "box_decoder.nms: expected one of 'plain', 'weighted'"),
    ({"anchors": {"num_layers": 1, "strides": [8], "aspect_ratios": [1.0], "min_scale": 0.1, "max_scale": 0.9},
      "box_decoder": {"num_coords": 4}}, "box_decoder.x_scale: required"),
])
def test_bad_anchor_tables_name_the_key(tables, problem):
    with pytest.raises(ConfigError) as info:
        parse_config({"pipelines": {"p": {"source": "0", "model": "m.tflite", **tables}}})
    assert any(problem in p for p in info.value.problems), info.value.problems


def test_keys_beside_a_preset_override_it():
    anchors, box_decoder = resolve_anchor_ssd(*anchors_config(anchors={"preset": "mediapipe-face-short-range", "min_scale": 0.2},
                                                              box_decoder={"min_score_thresh": 0.7, "nms": "plain"}))
    assert anchors.min_scale == 0.2 and anchors.max_scale == 0.75 and anchors.strides == (8, 16, 16, 16)
    assert box_decoder.min_score_thresh == 0.7 and box_decoder.nms == "plain" and box_decoder.x_scale == 128.0

