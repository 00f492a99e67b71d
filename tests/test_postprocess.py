"""Decoders on plain arrays: classification, SSD detection on the real outputs of ssd_tiny (in the
model's own order and permuted into TF1 / TF2 orders), box transforms and raw summaries."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from support import MODELS
from edge_agent.postprocess import (
    RAW_FULL_VALUES_MAX,
    DecodeError,
    Quantization,
    SsdOutputOrder,
    classify,
    decode_ssd,
    dequantize,
    find_ssd_outputs,
    ssd_order_from_roles,
    summarize_raw,
)
from edge_agent.runtime import load_model

LABELS = ["person", "bicycle", "car"]
TF1_ORDER = ("boxes", "classes", "scores", "count")


# --- classification ---------------------------------------------------------------------------
def test_classify_returns_top_k_best_first():
    scores = np.array([[0.05, 0.6, 0.1, 0.2, 0.05]], np.float32)
    result = classify(scores, Quantization(), ["a", "b", "c", "d", "e"], top_k=3)
    assert [c.id for c in result] == [1, 3, 2]
    assert [c.label for c in result] == ["b", "d", "c"]
    assert [c.score for c in result] == pytest.approx([0.6, 0.2, 0.1])


def test_classify_top_k_larger_than_the_classes_returns_all():
    result = classify(np.array([[0.2, 0.5, 0.3]], np.float32), Quantization(), None, top_k=10)
    assert [c.id for c in result] == [1, 2, 0]
    assert [c.label for c in result] == ["1", "2", "0"], "without labels the id is the label"


def test_classify_threshold_drops_low_scores():
    scores = np.array([[0.05, 0.6, 0.1, 0.25]], np.float32)
    assert [c.id for c in classify(scores, Quantization(), None, top_k=4, threshold=0.2)] == [1, 3]
    assert classify(scores, Quantization(), None, top_k=4, threshold=0.9) == ()


def test_classify_dequantises_int8_and_uint8():
    # the demo model's output quantisation: scale 1/256, zero point -128
    raw = np.array([[-128, 127, -64, 0]], np.int8)
    result = classify(raw, Quantization(1 / 256, -128), None, top_k=4)
    assert [c.id for c in result] == [1, 3, 2, 0]
    assert [c.score for c in result] == pytest.approx([255 / 256, 128 / 256, 64 / 256, 0.0])
    raw_u8 = np.array([[0, 255, 10]], np.uint8)
    result = classify(raw_u8, Quantization(1 / 255, 0), None, top_k=1)
    assert result[0].id == 1 and result[0].score == pytest.approx(1.0)


def test_classify_labels_out_of_range_fall_back_to_the_id():
    result = classify(np.array([[0.1, 0.9, 0.0]], np.float32), Quantization(), ["only-one"], top_k=2)
    assert [c.label for c in result] == ["1", "only-one"]


def test_dequantize_leaves_float_alone():
    values = np.array([0.25, 0.5], np.float32)
    result = dequantize(values, Quantization(0.1, 3))  # float outputs carry no real quantisation
    assert result.dtype == np.float32 and np.array_equal(result, values)
    np.testing.assert_allclose(dequantize(np.array([3, 13], np.uint8), Quantization(0.1, 3)), [0.0, 1.0], atol=1e-6)


def test_classify_on_the_real_demo_model_output():
    from support import DEMO_MODEL

    model = load_model(DEMO_MODEL)
    (output,) = model.run(np.full(model.input.shape, -128, np.int8))  # a black image
    spec = model.outputs[0]
    result = classify(output, Quantization(spec.scale, spec.zero_point), model.file.labels, top_k=10)
    assert len(result) == 10
    assert [c.score for c in result] == sorted((c.score for c in result), reverse=True)
    expected = (output.astype(np.float64).reshape(-1) - spec.zero_point) * spec.scale
    assert result[0].score == pytest.approx(expected.max()) and result[0].label == str(int(expected.argmax()))


# --- SSD ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ssd_outputs() -> tuple[list[np.ndarray], list[str], list[str]]:
    """Real outputs of ssd_tiny on a random image: (arrays, names, roles) in the interpreter's order."""
    model = load_model(MODELS / "ssd_tiny.tflite")
    image = np.random.default_rng(7).random((1, 64, 64, 3), dtype=np.float32)
    outputs = model.run(image)
    roles = [model.file.detection_output_roles[spec.index] for spec in model.outputs]
    return outputs, [spec.name for spec in model.outputs], roles


def by_role(ssd_outputs) -> dict[str, np.ndarray]:
    outputs, _, roles = ssd_outputs
    return dict(zip(roles, outputs))


def test_decode_ssd_on_real_outputs(ssd_outputs):
    outputs, _, roles = ssd_outputs
    arrays = by_role(ssd_outputs)
    count = int(arrays["count"][0])
    assert count == 10
    detections = decode_ssd(outputs, ssd_order_from_roles(roles), LABELS, threshold=0.0, max_detections=100)
    assert len(detections) == count
    expected = sorted(range(count), key=lambda i: -arrays["scores"][0, i])
    assert [d.score for d in detections] == pytest.approx([float(arrays["scores"][0, i]) for i in expected])
    assert [d.id for d in detections] == [int(arrays["classes"][0, i]) for i in expected]
    assert [d.label for d in detections] == [LABELS[int(arrays["classes"][0, i])] for i in expected]
    for detection, i in zip(detections, expected):
        np.testing.assert_allclose(detection.box, np.clip(arrays["boxes"][0, i], 0, 1), atol=1e-6)


def test_decode_ssd_threshold_and_max_detections(ssd_outputs):
    outputs, _, roles = ssd_outputs
    order = ssd_order_from_roles(roles)
    scores = np.sort(by_role(ssd_outputs)["scores"][0])[::-1]
    threshold = float((scores[3] + scores[4]) / 2)
    assert len(decode_ssd(outputs, order, LABELS, threshold=threshold, max_detections=100)) == 4
    limited = decode_ssd(outputs, order, LABELS, threshold=0.0, max_detections=3)
    assert len(limited) == 3 and [d.score for d in limited] == pytest.approx(scores[:3].tolist())
    assert decode_ssd(outputs, order, LABELS, threshold=1.01) == ()


def test_decode_ssd_ignores_rows_past_the_count(ssd_outputs):
    outputs, _, roles = ssd_outputs
    order = ssd_order_from_roles(roles)
    outputs = [a.copy() for a in outputs]
    outputs[order.count][...] = 2  # the op leaves stale rows past num_detections
    detections = decode_ssd(outputs, order, LABELS, threshold=0.0)
    assert len(detections) == 2
    assert {d.score for d in detections} == set(outputs[order.scores][0, :2].tolist())


PERMUTATIONS = {
    "TF1 (boxes, classes, scores, count)": TF1_ORDER,
    "TF2 OD API (scores, boxes, count, classes)": ("scores", "boxes", "count", "classes"),
    "TF2 signature (count, scores, classes, boxes)": ("count", "scores", "classes", "boxes"),
    "scores first (scores, classes, boxes, count)": ("scores", "classes", "boxes", "count"),
}


@pytest.mark.parametrize("permutation", list(PERMUTATIONS.values()), ids=list(PERMUTATIONS))
def test_find_ssd_outputs_recognises_the_order_from_the_arrays(ssd_outputs, permutation):
    outputs, _, roles = ssd_outputs
    reference = decode_ssd(outputs, ssd_order_from_roles(roles), LABELS, threshold=0.3)
    assert reference, "the fixture image should give detections above 0.3"
    arrays = by_role(ssd_outputs)
    permuted = [arrays[role] for role in permutation]
    order = find_ssd_outputs(permuted)
    assert order == SsdOutputOrder(*(permutation.index(r) for r in TF1_ORDER))
    assert decode_ssd(permuted, order, LABELS, threshold=0.3) == reference


def test_every_order_of_the_real_outputs_decodes_the_same(ssd_outputs):
    outputs, _, roles = ssd_outputs
    reference = decode_ssd(outputs, ssd_order_from_roles(roles), LABELS)
    arrays = by_role(ssd_outputs)
    for permutation in itertools.permutations(TF1_ORDER):
        permuted = [arrays[role] for role in permutation]
        assert decode_ssd(permuted, find_ssd_outputs(permuted), LABELS) == reference, permutation


def test_find_ssd_outputs_uses_tf1_names_when_values_are_ambiguous(ssd_outputs):
    arrays = by_role(ssd_outputs)
    # scores of exactly 0 and 1 look like class ids; the TF1 tensor names settle it
    scores = np.where(arrays["scores"] > 0.5, 1.0, 0.0).astype(np.float32)
    classes = np.full_like(arrays["classes"], 2.0)
    permuted = [scores, arrays["boxes"], classes, arrays["count"]]
    names = ["TFLite_Detection_PostProcess:2", "TFLite_Detection_PostProcess", "TFLite_Detection_PostProcess:1",
             "TFLite_Detection_PostProcess:3"]
    assert find_ssd_outputs(permuted, names) == SsdOutputOrder(boxes=1, classes=2, scores=0, count=3)


def test_find_ssd_outputs_rejects_outputs_that_are_not_ssd(ssd_outputs):
    outputs, _, _ = ssd_outputs
    with pytest.raises(DecodeError, match="4 outputs"):
        find_ssd_outputs(outputs[:3])
    with pytest.raises(DecodeError, match="do not look like SSD"):
        find_ssd_outputs([np.zeros((1, 10), np.float32)] * 4)


def test_letterbox_transform_is_applied_to_boxes(ssd_outputs):
    outputs, _, roles = ssd_outputs
    order = ssd_order_from_roles(roles)
    plain = decode_ssd(outputs, order, LABELS, threshold=0.0)
    # a 4:3 frame letterboxed into a square: model rows 1/8..7/8 hold the frame
    transform = (4 / 3, -1 / 6, 1.0, 0.0)
    mapped = decode_ssd(outputs, order, LABELS, threshold=0.0, box_transform=transform)
    raw_boxes = outputs[order.boxes][0]
    assert [d.score for d in mapped] == [d.score for d in plain]
    for detection in mapped:
        i = int(np.flatnonzero(outputs[order.scores][0] == np.float32(detection.score))[0])
        ymin, xmin, ymax, xmax = raw_boxes[i]
        expected = np.clip([ymin * 4 / 3 - 1 / 6, xmin, ymax * 4 / 3 - 1 / 6, xmax], 0, 1)
        np.testing.assert_allclose(detection.box, expected, atol=1e-6)


def test_boxes_are_clipped_to_the_frame(ssd_outputs):
    outputs, _, roles = ssd_outputs
    order = ssd_order_from_roles(roles)
    outputs = [a.copy() for a in outputs]
    outputs[order.boxes][0, 0] = [-0.2, -0.1, 1.3, 1.05]
    outputs[order.scores][0, 0] = 0.99
    detections = decode_ssd(outputs, order, LABELS, threshold=0.0)
    assert detections[0].box == (0.0, 0.0, 1.0, 1.0)
    for detection in detections:
        assert all(0.0 <= v <= 1.0 for v in detection.box)


# --- raw --------------------------------------------------------------------------------------
def test_summarize_raw_includes_values_only_for_small_outputs():
    small = np.array([[0.1, 0.7, 0.2]], np.float32)
    big = np.arange(RAW_FULL_VALUES_MAX + 1, dtype=np.float32).reshape(1, -1)
    quantised = np.array([[0, 128, 255]], np.uint8)
    summaries = summarize_raw([small, big, quantised], ["probs", "embedding", "q"], [Quantization(), Quantization(), Quantization(0.5, 128)])
    first, second, third = summaries
    assert first == {"name": "probs", "shape": [1, 3], "dtype": "float32", "min": pytest.approx(0.1), "max": pytest.approx(0.7),
                     "argmax": 1, "values": pytest.approx([0.1, 0.7, 0.2])}
    assert "values" not in second
    assert second["shape"] == [1, RAW_FULL_VALUES_MAX + 1] and second["max"] == RAW_FULL_VALUES_MAX and second["argmax"] == RAW_FULL_VALUES_MAX
    assert third["dtype"] == "uint8" and third["values"] == [-64.0, 0.0, 63.5] and third["min"] == -64.0


def test_summarize_raw_on_the_real_sensor_model():
    model = load_model(MODELS / "sensor_tiny.tflite")
    outputs = model.run(np.linspace(-1, 1, 16, dtype=np.float32).reshape(1, 16))
    (summary,) = summarize_raw(outputs, [s.name for s in model.outputs], [Quantization()])
    assert summary["shape"] == [1, 4] and len(summary["values"]) == 4
    assert sum(summary["values"]) == pytest.approx(1.0, abs=1e-4)  # softmax
    assert summary["argmax"] == int(np.argmax(outputs[0]))
