"""Overlays drawn with OpenCV, found again in the picture where the detection, pose, mask and zone
say they are (after JPEG encoding and decoding, as a viewer gets them).

Poses and segmentation masks are the decoder's documented shapes (keypoints named and normalised to
the frame; a class map in the model's input with its box transform to the frame); the records here
are stand-ins of those shapes, so the drawing is tested whether or not a decoder produces them yet."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pytest

from edge_agent.records import ClassScore, Detection
from edge_agent.views.drawing import ZONE_COLOUR, class_colour, crop_box_for, encode_jpeg, render

W, H = 320, 240
SQUARE = (100, 60, 148, 108)  # x0, y0, x1, y1 (exclusive) of a red square
RED = (0, 0, 230)


@dataclass(frozen=True)
class Keypoint:
    name: str
    x: float
    y: float
    score: float | None = None


@dataclass(frozen=True)
class Pose:
    id: int
    label: str
    score: float
    box: tuple[float, float, float, float]
    keypoints: tuple[Keypoint, ...]


@dataclass(frozen=True)
class Mask:
    class_ids: np.ndarray
    labels: tuple[str, ...]
    box_transform: tuple[float, float, float, float]


@dataclass(frozen=True)
class Decoded:
    classes: tuple = ()
    detections: tuple = ()
    poses: tuple = ()
    mask: Mask | None = None


def scene() -> np.ndarray:
    frame = np.zeros((H, W, 3), np.uint8)
    x0, y0, x1, y1 = SQUARE
    frame[y0:y1, x0:x1] = RED
    return frame


def person() -> Detection:
    x0, y0, x1, y1 = SQUARE
    return Detection(0, "person", 0.9, (y0 / H, x0 / W, y1 / H, x1 / W))


def decoded_jpeg(picture: np.ndarray) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(encode_jpeg(picture, 90), np.uint8), cv2.IMREAD_COLOR)


def near(pixel: np.ndarray, colour: tuple[int, int, int], tolerance: int = 60) -> bool:
    return bool(np.abs(pixel.astype(int) - np.array(colour)).max() <= tolerance)


def edge_fraction(picture: np.ndarray, colour, points) -> float:
    """The share of `points` (x, y) whose pixel, or one next to it, has `colour`."""
    hits = 0
    for x, y in points:
        patch = picture[max(0, y - 1):y + 2, max(0, x - 1):x + 2].reshape(-1, 3)
        hits += any(near(p, colour) for p in patch)
    return hits / len(points)


def box_edges(x0: int, y0: int, x1: int, y1: int) -> list[tuple[int, int]]:
    """Points along the bottom and right edges, and the lower half of the left edge (the label sits on top)."""
    points = [(x, y1) for x in range(x0 + 4, x1 - 4, 3)] + [(x1, y) for y in range(y0 + 4, y1 - 4, 3)]
    return points + [(x0, y) for y in range((y0 + y1) // 2, y1 - 4, 3)]


def test_a_box_is_drawn_where_the_detection_is_with_its_label_score_and_track_id():
    frame = scene()
    original = frame.copy()
    picture = decoded_jpeg(render(frame, Decoded(detections=(person(),)), (7,), height=H, caption="door", ts=0.0))
    colour = class_colour(0)
    x0, y0, x1, y1 = SQUARE
    assert edge_fraction(picture, colour, box_edges(x0, y0, x1, y1)) >= 0.9
    assert edge_fraction(picture, colour, box_edges(x0 + 30, y0 + 60, x1 + 30, y1 + 60)) < 0.2  # not elsewhere
    label = picture[max(0, y0 - 16):y0, x0:x0 + 60].reshape(-1, 3)  # the filled label above the box
    assert np.mean([near(p, colour) for p in label]) > 0.4
    assert near(picture[(y0 + y1) // 2, (x0 + x1) // 2], RED, 40)  # the object itself is not painted over
    assert np.array_equal(frame, original), "the frame is not drawn on: the views draw on a new picture"
    stamp = picture[H - 20:H, 0:150]
    assert (stamp > 200).any(), "the caption and timestamp are written bottom left"


@pytest.mark.parametrize("height", [480, 120])
def test_boxes_follow_the_picture_when_it_is_resized(height):
    scale = height / H
    picture = decoded_jpeg(render(scene(), Decoded(detections=(person(),)), height=height))
    assert picture.shape[:2] == (height, int(W * scale))
    x0, y0, x1, y1 = (round(v * scale) for v in SQUARE)
    assert edge_fraction(picture, class_colour(0), box_edges(x0, y0, x1, y1)) >= 0.85


def test_an_event_snapshot_can_be_cropped_to_its_object():
    detection = person()
    crop = crop_box_for(detection.box, H, W)
    y0, y1, x0, x1 = crop
    assert x0 <= SQUARE[0] and x1 >= SQUARE[2] and y0 <= SQUARE[1] and y1 >= SQUARE[3]  # the object, whole
    assert (y1 - y0) < H and (x1 - x0) < W
    picture = decoded_jpeg(render(scene(), Decoded(detections=(detection,)), (3,), height=200, crop=crop))
    assert picture.shape[0] == 200
    scale = 200 / (y1 - y0)
    box = [round((SQUARE[0] - x0) * scale), round((SQUARE[1] - y0) * scale),
           round((SQUARE[2] - x0) * scale), round((SQUARE[3] - y0) * scale)]
    assert edge_fraction(picture, class_colour(0), box_edges(*box)) >= 0.85
    red = np.all(np.abs(picture.astype(int) - RED) < 50, axis=2).mean()
    assert red > 0.2, "the object fills a good part of a cropped snapshot"


def test_without_annotate_the_picture_is_the_frame_resized():
    frame = scene()
    picture = render(frame, Decoded(detections=(person(),)), (1,), height=120, annotate=False, caption="x", ts=0.0)
    assert np.array_equal(picture, cv2.resize(frame, (160, 120), interpolation=cv2.INTER_AREA))


def test_pose_keypoints_and_the_skeleton_between_them():
    frame = np.zeros((H, W, 3), np.uint8)
    keypoints = (Keypoint("left_shoulder", 0.3, 0.3, 0.9), Keypoint("right_shoulder", 0.7, 0.3, 0.8),
                 Keypoint("left_hip", 0.3, 0.7, 0.05),  # too uncertain: neither dot nor bone
                 Keypoint("nose", 0.5, 0.15, None))  # no score (MediaPipe-style): drawn
    pose = Pose(0, "person", 0.88, (0.1, 0.2, 0.9, 0.8), keypoints)
    picture = decoded_jpeg(render(frame, Decoded(poses=(pose,)), height=H))
    colour = class_colour(0)
    bone = [(int(W * x), int(H * 0.3)) for x in np.linspace(0.36, 0.64, 10)]
    assert edge_fraction(picture, colour, bone) == 1.0, "the shoulders are joined"
    assert picture[int(H * 0.3), int(W * 0.3)].max() > 150 and picture[int(H * 0.15), int(W * 0.5)].max() > 150
    assert picture[int(H * 0.7) - 2:int(H * 0.7) + 3, int(W * 0.3) - 2:int(W * 0.3) + 3].max() < 40, "uncertain keypoint"
    torso = [(int(W * 0.3), int(H * y)) for y in np.linspace(0.4, 0.6, 6)]
    assert edge_fraction(picture, colour, torso) == 0.0, "no bone to an uncertain keypoint"


def test_a_segmentation_mask_is_a_translucent_overlay_and_the_background_stays_clear():
    frame = np.full((H, W, 3), 100, np.uint8)
    class_ids = np.zeros((64, 64), np.uint8)
    class_ids[:, :32] = 1  # the person is the left half of the model's input
    mask = Mask(class_ids, ("background", "person"), (1.0, 0.0, 1.0, 0.0))
    picture = render(frame, Decoded(mask=mask), height=H)
    left, right = picture[H // 2, W // 4].astype(int), picture[H // 2, 3 * W // 4].astype(int)
    assert np.array_equal(right, [100, 100, 100]), "background is not tinted"
    tint = np.array(class_colour(1)) * 0.45 + 100 * 0.55
    assert np.abs(left - tint).max() <= 2, "the class colour blended over the frame, not painted"


def test_a_mask_follows_the_models_box_transform_onto_the_frame():
    """A model that saw only the right half of the frame (a crop): its whole map lands there."""
    frame = np.full((H, W, 3), 100, np.uint8)
    mask = Mask(np.ones((32, 32), np.uint8), ("background", "person"), (1.0, 0.0, 0.5, 0.5))  # frame_x = x/2 + 0.5
    picture = render(frame, Decoded(mask=mask), height=H)
    tinted = np.any(picture != 100, axis=2)
    assert not tinted[:, : W // 2 - 1].any() and tinted[:, W // 2 + 1:].all()


def test_a_snapshot_of_an_instance_segmentation_shows_each_mask_over_its_object():
    """A real yolo-seg decode (tests/model_files/yolov8_seg_float.tflite, a 4:3 frame letterboxed into its 64x64
    input) drawn as a snapshot: each instance's mask tinted in its class's colour, the rest of its box clear."""
    from decode_support import RED as FRAME_RED, active_model, decode_frame, solid_frame
    from edge_agent.config import PreprocessOptions

    frame = solid_frame(120, 160, FRAME_RED)
    decoded = decode_frame(active_model("yolov8_seg_float", preprocess=PreprocessOptions()), frame)
    assert [d.label for d in decoded.detections] == ["green", "red", "blue", "green"] and decoded.mask is not None
    picture = decoded_jpeg(render(frame, decoded, height=240))  # 2 picture pixels per frame pixel
    # frame pixel = (input pixel - 8 rows of padding) x 2.5, so picture pixel = (input pixel - 8) x 5
    def at(input_row: float, input_col: float) -> np.ndarray:
        return picture[int((input_row - 8) * 5), int(input_col * 5)]

    def tinted(class_id: int) -> tuple[int, int, int]:
        return tuple(int(v) for v in np.array(FRAME_RED) * 0.55 + np.array(class_colour(class_id)) * 0.45)

    assert near(at(20, 15), tinted(0), 30), "the red box's mask (input rows 10-28, cols 10-19)"
    assert near(at(20, 21.5), FRAME_RED, 30), "its box goes on to col 22; the mask does not"
    assert near(at(42, 32), tinted(1), 30), "the green box's mask"
    assert near(at(34, 40), FRAME_RED, 30), "the hole in the green mask (input rows 32-35 there)"
    assert near(at(42, 46), tinted(2), 30), "the blue box's mask beside the green one it lies under"
    assert near(at(45, 5), FRAME_RED, 30) and near(at(52, 60), FRAME_RED, 30), "no mask outside the boxes"


def test_zones_and_the_top_classes():
    frame = np.zeros((H, W, 3), np.uint8)
    zones = (("driveway", ((0.1, 0.5), (0.9, 0.5), (0.9, 0.95), (0.1, 0.95))),)
    classes = (ClassScore(3, "cat", 0.93), ClassScore(1, "dog", 0.05))
    picture = decoded_jpeg(render(frame, Decoded(classes=classes), zones=zones, height=H))
    bottom = [(x, int(0.95 * H)) for x in range(int(0.15 * W), int(0.85 * W), 5)]
    assert edge_fraction(picture, ZONE_COLOUR, bottom) >= 0.9
    assert edge_fraction(picture, class_colour(3), [(x, 10) for x in range(6, 40, 4)]) >= 0.5  # "cat 93%" top left
