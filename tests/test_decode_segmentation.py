"""Segmentation: planted class regions (models/make_layout_models.py) summarised as segments with coverage of the
frame and boxes in frame coordinates through letterbox, for scores [1, H, W, C] and ids [1, H, W]; MediaPipe's
selfie segmentation ([1, 256, 256, 1] foreground) on a real photo; the payload stays small, the mask stays."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data

from decode_support import RED, active_model, decode_frame, letterbox, planted, solid_frame
from edge_agent.config import PreprocessOptions
from edge_agent.records import ModelRef, Prediction

FRAME_H, FRAME_W = 120, 160
MAP = planted.SEG_SIZE


def expected_segments() -> dict[int, tuple[float, tuple[float, ...]]]:
    """class -> (coverage of the frame, frame box), by hand: map rows -> input rows -> frame rows."""
    scale, new_h, new_w, top, left = letterbox(FRAME_H, FRAME_W)
    per_map_pixel = (64 / MAP) ** 2 / (new_h * new_w)  # one map pixel is 2x2 input pixels
    visible_rows = (64 - 2 * top) // 2  # map rows inside the frame
    segments = {}
    inside = visible_rows * MAP
    for class_id, y0, y1, x0, x1 in planted.SEG_REGIONS:
        area = (y1 - y0) * (x1 - x0)
        inside -= area
        box = ((y0 * 2 - top) / new_h, (x0 * 2 - left) / new_w, (y1 * 2 - top) / new_h, (x1 * 2 - left) / new_w)
        segments[class_id] = (area * per_map_pixel, box)
    segments[0] = (inside * per_map_pixel, (0.0, 0.0, 1.0, 1.0))
    return segments


@pytest.mark.parametrize("name, layout", [("segmentation_scores", "segmentation-scores"), ("segmentation_ids", "segmentation-ids")])
def test_planted_regions_become_segments_in_frame_coordinates(name, layout):
    active = active_model(name)
    assert active.task == "segmentation" and active.layout.layout == layout
    decoded = decode_frame(active, solid_frame(FRAME_H, FRAME_W, RED))
    expected = expected_segments()
    assert [s.id for s in decoded.segments] == sorted(expected, key=lambda c: -expected[c][0])
    for segment in decoded.segments:
        coverage, box = expected[segment.id]
        assert segment.coverage == pytest.approx(coverage) and segment.box == pytest.approx(box, abs=1e-6)
    assert sum(s.coverage for s in decoded.segments) == pytest.approx(1.0)
    assert decoded.mask.class_ids.shape == (MAP, MAP) and decoded.mask.box_transform == (64 / 48, -8 / 48, 1.0, 0.0)


def test_background_classes_are_not_reported(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("background\ncat\ndog\n")
    decoded = decode_frame(active_model("segmentation_scores", labels=str(labels)), solid_frame(FRAME_H, FRAME_W, RED))
    assert [s.label for s in decoded.segments] == ["dog", "cat"]
    assert decoded.mask.labels == ("background", "cat", "dog")


def test_the_payload_carries_segments_and_not_the_mask():
    decoded = decode_frame(active_model("segmentation_ids"), solid_frame(FRAME_H, FRAME_W, RED))
    prediction = Prediction("dev", "p", 1, 0.0, ModelRef("m", "0" * 64), "segmentation", 1.0, 2.0,
                            segments=decoded.segments, mask=decoded.mask)
    payload = prediction.to_payload()
    assert [set(s) for s in payload["segments"]] == [{"id", "label", "coverage", "box"}] * 3
    assert "mask" not in payload and len(str(payload)) < 1000
    assert prediction.mask is decoded.mask and prediction.top()[0] == "0"


def test_selfie_segmentation_finds_the_astronaut():
    active = active_model("selfie_segmentation", runtime="litert")  # its custom op is in LiteRT only
    assert active.layout.layout == "segmentation-foreground" and active.labels == ["selfie"]
    photo = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    (person,) = decode_frame(active, photo).segments
    assert person.label == "selfie" and 0.3 < person.coverage < 0.8
    mask = decode_frame(active, photo).mask.class_ids  # 256x256 for the 512x512 photo
    face, suit = mask[35:80, 95:130], mask[200:256, 40:200]  # face and spacesuit, measured by hand
    wall_left, wall_right = mask[0:30, 0:30], mask[0:30, 226:256]
    assert (face == 0).mean() > 0.95 and (suit == 0).mean() > 0.95
    assert (wall_left == 0).mean() < 0.05 and (wall_right == 0).mean() < 0.05
    # a letterboxed frame: the same person, and the padding is not counted as background or person
    wide = np.full((512, 768, 3), 30, np.uint8)
    wide[:, 128:640] = photo
    letterboxed = active_model("selfie_segmentation", runtime="litert", preprocess=PreprocessOptions(resize="letterbox"))
    (wide_person,) = decode_frame(letterboxed, wide).segments
    assert wide_person.coverage == pytest.approx(person.coverage * 512 / 768, rel=0.1)
    assert wide_person.box[1] >= 128 / 768 - 0.02 and wide_person.box[3] <= 640 / 768 + 0.02
