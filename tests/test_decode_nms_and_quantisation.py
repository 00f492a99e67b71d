"""Properties of the decoders on plain arrays: NMS keeps no two overlapping boxes of one class and drops
only boxes a better one covers; thresholding int8 outputs in the quantised domain keeps exactly the
boxes that dequantising first would keep; broken values (NaN, absurd class ids) never reach a payload."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from edge_agent.decode.common import Quantization, quantized_threshold
from edge_agent.decode.nms import class_aware_nms, iou_one_to_many, weighted_nms
from edge_agent.decode.yolo import YoloDecoder, YoloLayout

IDENTITY = (1.0, 0.0, 1.0, 0.0)


def random_boxes(draw, count: int) -> np.ndarray:
    corners = draw(arrays(np.float32, (count, 2), elements=st.floats(0, 0.875, width=32)))
    sizes = draw(arrays(np.float32, (count, 2), elements=st.floats(0.015625, 0.5, width=32)))
    return np.concatenate([corners, corners + sizes], axis=1)


@st.composite
def scored_boxes(draw):
    count = draw(st.integers(0, 40))
    boxes = random_boxes(draw, count)
    scores = draw(arrays(np.float32, count, elements=st.floats(0.015625, 1, width=32), unique=True))
    classes = draw(arrays(np.int32, count, elements=st.integers(0, 2)))
    return boxes, scores, classes


@settings(max_examples=200, deadline=None)
@given(scored_boxes(), st.floats(0.1, 0.9), st.integers(1, 50))
def test_class_aware_nms_properties(data, iou, max_detections):
    boxes, scores, classes = data
    kept = class_aware_nms(boxes, scores, classes, iou, max_detections)
    assert len(kept) <= max_detections and len(set(kept.tolist())) == len(kept)
    assert list(scores[kept]) == sorted(scores[kept], reverse=True), "best first"
    for position, i in enumerate(kept):  # no two kept boxes of one class overlap by more than iou
        same = kept[position + 1:][classes[kept[position + 1:]] == classes[i]]
        if len(same):
            assert iou_one_to_many(boxes[i], boxes[same]).max() <= iou + 1e-5
    if len(kept) < max_detections:  # every box dropped is covered by a better kept box of its class
        for j in set(range(len(boxes))) - set(kept.tolist()):
            rivals = kept[(classes[kept] == classes[j]) & (scores[kept] > scores[j])]
            assert len(rivals) and iou_one_to_many(boxes[j], boxes[rivals]).max() > iou - 1e-5


@st.composite
def many_scored_boxes(draw):
    count = draw(st.integers(50, 400))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    corners = rng.random((count, 2), dtype=np.float32) * 0.8
    boxes = np.concatenate([corners, corners + 0.05 + rng.random((count, 2), dtype=np.float32) * 0.3], axis=1)
    scores = rng.permutation(count).astype(np.float32) / count + 0.001  # unique
    return boxes, scores, rng.integers(0, draw(st.integers(1, 4)), count).astype(np.int32)


@settings(max_examples=100, deadline=None)
@given(many_scored_boxes(), st.floats(0.2, 0.7), st.integers(1, 12))
def test_nms_on_the_best_candidates_first_equals_nms_on_all(data, iou, max_detections):
    """The growing-prefix shortcut gives exactly what suppressing every candidate gives."""
    from edge_agent.decode.nms import _opencv_nms

    boxes, scores, classes = data
    everything = _opencv_nms(boxes, scores, classes, iou)[:max_detections]
    np.testing.assert_array_equal(class_aware_nms(boxes, scores, classes, iou, max_detections), everything)


def test_weighted_nms_averages_the_cluster_and_keeps_the_best_score():
    boxes = np.array([[0.0, 0.30, 0.4, 0.70], [0.0, 0.34, 0.4, 0.74], [0.5, 0.5, 0.9, 0.9]], np.float32)
    scores = np.array([0.9, 0.3, 0.8], np.float32)
    points = np.array([[[0.5, 0.2]], [[0.54, 0.2]], [[0.7, 0.7]]], np.float32)
    merged_boxes, merged_scores, merged_points = weighted_nms(boxes, scores, points, 0.3, 10)
    assert merged_scores.tolist() == pytest.approx([0.9, 0.8])
    expected_x = (0.30 * 0.9 + 0.34 * 0.3) / 1.2
    assert merged_boxes[0, 1] == pytest.approx(expected_x) and merged_points[0, 0, 0] == pytest.approx((0.5 * 0.9 + 0.54 * 0.3) / 1.2)
    np.testing.assert_allclose(merged_boxes[1], boxes[2])


def v8_decoder(quant: Quantization, dtype, nc: int, n: int, threshold: float) -> YoloDecoder:
    return YoloDecoder(YoloLayout("v8", True, nc, n, False), quant, np.dtype(dtype), (64, 64), None,
                       np.full(nc, threshold, np.float32), threshold, 0.45, 100)


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from([(np.int8, -128, 127), (np.uint8, 0, 255)]),
    st.floats(1 / 512, 1 / 64), st.integers(-20, 20), st.floats(0.05, 0.95), st.integers(0, 2**31 - 1),
)
def test_quantised_thresholding_keeps_what_dequantising_first_keeps(kind, scale, zero_offset, threshold, seed):
    dtype, low, high = kind
    zero_point = int(np.clip((low + high) // 2 + zero_offset if dtype == np.int8 else zero_offset + 10, low, high))
    quant = Quantization(scale, zero_point)
    stored = np.random.default_rng(seed).integers(low, high + 1, (1, 7, 84)).astype(dtype)
    quantised = v8_decoder(quant, dtype, 3, 84, threshold)([stored.copy()], IDENTITY)
    real = (stored.astype(np.float32) - zero_point) * np.float32(scale)
    from_floats = v8_decoder(Quantization(), np.float32, 3, 84, threshold)([real], IDENTITY)
    assert quantised == from_floats


def test_quantized_threshold_bounds():
    quant = Quantization(1 / 255, -128)
    assert quantized_threshold(0.5, quant, np.dtype(np.int8)) <= round(0.5 * 255 - 128)
    assert quantized_threshold(2.0, quant, np.dtype(np.int8)) == 128  # nothing stored reaches it
    assert quantized_threshold(-1.0, quant, np.dtype(np.int8)) == -128
    assert quantized_threshold(0.5, Quantization(), np.dtype(np.float32)) == 0.5


def test_nan_boxes_and_scores_never_reach_a_detection():
    head = np.zeros((1, 7, 84), np.float32)
    head[0, :4, 0] = np.nan, 0.5, 0.2, 0.2
    head[0, 4, 0] = 0.9
    head[0, :4, 1] = 0.5, 0.5, 0.2, 0.2
    head[0, 5, 1] = np.nan
    head[0, :4, 2] = 0.3, 0.3, 0.1, 0.1
    head[0, 6, 2] = 0.8
    decoded = v8_decoder(Quantization(), np.float32, 3, 84, 0.5)([head], IDENTITY)
    assert [(d.id, d.score) for d in decoded.detections] == [(2, pytest.approx(0.8))]


def test_end2end_rows_with_absurd_class_ids_are_dropped():
    rows = np.zeros((1, 5, 6), np.float32)
    rows[0, 0] = 0.1, 0.1, 0.3, 0.3, 0.9, 1e12
    rows[0, 1] = 0.1, 0.1, 0.3, 0.3, 0.9, -3
    rows[0, 2] = 0.1, 0.1, 0.3, 0.3, 0.9, np.nan
    rows[0, 3] = 0.2, 0.1, 0.4, 0.3, 0.8, 2
    decoder = YoloDecoder(YoloLayout("end2end", False, 0, 5, False), Quantization(), np.dtype(np.float32), (64, 64),
                          ["a", "b", "c"], np.full(3, 0.5, np.float32), 0.5, 0.45, 20)
    (detection,) = decoder([rows], IDENTITY).detections
    assert detection.label == "c" and detection.box == pytest.approx((0.1, 0.2, 0.3, 0.4))
