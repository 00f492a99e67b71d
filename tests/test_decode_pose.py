"""Pose decoding on real .tflite models with planted keypoints (models/make_layout_models.py): MoveNet
single- and multi-pose, YOLOv8-pose; keypoints named as COCO names them, at hand-computed frame
coordinates through letterbox; the payload; and a pose model with an unexpected keypoint count."""

from __future__ import annotations

import numpy as np
import pytest

from decode_support import BLUE, RED, active_model, decode_frame, input_mean, letterbox, model_to_frame, planted, solid_frame
from support import RUNTIMES
from edge_agent.config import PreprocessOptions
from edge_agent.decode import DecodeError
from edge_agent.decode.pose import COCO_KEYPOINTS
from edge_agent.records import ModelRef, Prediction

FRAME_H, FRAME_W = 120, 160


def frame_point(x: float, y: float) -> tuple[float, float]:
    """A model-input point -> the frame, by hand (not clipped: keypoints may sit in the padding)."""
    _, new_h, new_w, top, left = letterbox(FRAME_H, FRAME_W)
    return (x * 64 - left) / new_w, (y * 64 - top) / new_h


def assert_keypoints(pose, points, scores):
    assert [k.name for k in pose.keypoints] == list(COCO_KEYPOINTS)
    for keypoint, (x, y), score in zip(pose.keypoints, points, scores):
        assert (keypoint.x, keypoint.y) == pytest.approx(frame_point(x, y), abs=1e-5)
        assert keypoint.score == pytest.approx(score, abs=1e-5)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_movenet_single_pose(runtime):
    active = active_model("movenet_single_layout", runtime=runtime)
    assert active.task == "pose" and active.layout.layout == "movenet-single"
    figure = [(x, y) for y, x, _ in planted.FIGURE]
    for colour, nose in ((RED, input_mean(FRAME_H, FRAME_W, 1.0)), (BLUE, 0.0)):
        (pose,) = decode_frame(active, solid_frame(FRAME_H, FRAME_W, colour)).poses
        scores = [nose] + [s for _, _, s in planted.FIGURE[1:]]
        assert pose.label == "person" and pose.score == pytest.approx(np.mean(scores), abs=1e-5)
        assert_keypoints(pose, figure, scores)
        # the box around the keypoints scoring at least the threshold (0.3): without the nose when it is unseen
        used = [p for p, s in zip(figure, scores) if s >= 0.3]
        box = (min(y for _, y in used), min(x for x, _ in used), max(y for _, y in used), max(x for x, _ in used))
        np.testing.assert_allclose(pose.box, model_to_frame(box, FRAME_H, FRAME_W), atol=1e-5)


def test_movenet_single_pose_below_the_threshold_gives_no_pose():
    assert decode_frame(active_model("movenet_single_layout", threshold=0.9), solid_frame(FRAME_H, FRAME_W, RED)).poses == ()


def test_movenet_multi_pose():
    active = active_model("movenet_multi_layout")
    assert active.layout.layout == "movenet-multi"
    (pose,) = decode_frame(active, solid_frame(FRAME_H, FRAME_W, RED)).poses  # the 0.10 person is below 0.3
    ymin, xmin, ymax, xmax, score = planted.MULTI_PEOPLE[0]
    assert pose.score == pytest.approx(score) and pose.box == pytest.approx(tuple(model_to_frame((ymin, xmin, ymax, xmax), FRAME_H, FRAME_W)), abs=1e-5)
    assert_keypoints(pose, [(x, y) for y, x, _ in planted.FIGURE], [s for _, _, s in planted.FIGURE])
    both = decode_frame(active_model("movenet_multi_layout", threshold=0.05), solid_frame(FRAME_H, FRAME_W, RED)).poses
    assert [p.score for p in both] == pytest.approx([0.85, 0.10])
    second = both[1]
    assert (second.keypoints[0].x, second.keypoints[0].y) == pytest.approx(frame_point(planted.FIGURE[0][1] + 0.3, planted.FIGURE[0][0] + 0.02), abs=1e-5)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_yolov8_pose(runtime):
    active = active_model("yolov8_pose_layout", runtime=runtime, preprocess=PreprocessOptions())
    assert active.task == "pose" and active.layout.layout == "yolo-pose" and active.labels == ["person"]
    (pose,) = decode_frame(active, solid_frame(FRAME_H, FRAME_W, BLUE)).poses
    cx, cy, w, h, score = planted.POSE_BOX
    assert pose.label == "person" and pose.score == pytest.approx(score)
    np.testing.assert_allclose(pose.box, model_to_frame((cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2), FRAME_H, FRAME_W), atol=1e-5)
    assert_keypoints(pose, [(x, y) for y, x, _ in planted.FIGURE], [s for _, _, s in planted.FIGURE])


def test_pose_payload():
    (pose,) = decode_frame(active_model("movenet_multi_layout"), solid_frame(FRAME_H, FRAME_W, RED)).poses
    prediction = Prediction("dev", "p", 1, 0.0, ModelRef("m", "0" * 64), "pose", 1.0, 2.0, poses=(pose,))
    payload = prediction.to_payload()
    (item,) = payload["poses"]
    assert set(item) == {"id", "label", "score", "box", "keypoints"} and len(item["box"]) == 4
    assert item["keypoints"][0] == {"name": "nose", "x": round(pose.keypoints[0].x, 5), "y": round(pose.keypoints[0].y, 5),
                                    "score": round(pose.keypoints[0].score, 5)}
    assert "detections" not in payload and prediction.top() == ("person", pytest.approx(0.85))


def test_a_pose_model_with_an_unexpected_keypoint_count_is_a_clear_error():
    with pytest.raises(DecodeError) as info:
        active_model("pose_13_keypoints", task="pose")
    assert "[1, 1, 13, 3]" in str(info.value) and "13 keypoints" in str(info.value) and "17" in str(info.value)
    auto = active_model("pose_13_keypoints")  # auto does not guess: it explains and publishes raw
    assert auto.task == "raw" and any("13 keypoints" in reason for reason in auto.layout.params["rejected"])


def test_a_detection_task_on_a_pose_model_is_refused_with_the_layouts():
    with pytest.raises(DecodeError) as info:
        active_model("movenet_single_layout", task="detection")
    assert "[[1, 1, 17, 3]]" in str(info.value) and "yolo-v8" in str(info.value)
