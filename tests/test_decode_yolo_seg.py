"""YOLO instance segmentation on real .tflite models whose last layers plant known boxes, mask coefficients
and prototypes (models/make_layout_models.py SEG_*): float NHWC with the prototypes listed first, full-int8
with NCHW input and channels-first prototypes, a transposed head without metadata, an end-to-end head.
Boxes at hand-computed frame coordinates through letterbox; masks only for the boxes NMS keeps, cropped
to their box and the frame; the class map over the input; coverage; per-label thresholds; the payload;
crafted outputs (NaN, inf, absurd boxes); and the errors at start for outputs that do not fit together."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from decode_support import BLUE, RED, active_model, cxcywh_to_yxyx, decode_frame, input_mean, letterbox, model_to_frame, \
    planted, solid_frame
from edge_agent.config import PreprocessOptions
from edge_agent.decode import ClassCountError, DecodeError
from edge_agent.records import ModelRef, Prediction
from support import RUNTIMES

FRAME_H, FRAME_W = 120, 160  # 4:3, letterboxed into the 64x64 input: rows 0-7 and 56-63 are padding
SIZE = planted.SIZE
STRIDE = SIZE // planted.SEG_PROTO
_, NEW_H, NEW_W, TOP, LEFT = letterbox(FRAME_H, FRAME_W)
ULTRALYTICS_PAD = 114
# name: (padding; red frames' score for box 10 = the red mean, which the padding adds to)
MODELS = {
    "yolov8_seg_float": ULTRALYTICS_PAD,
    "yolov8_seg_nchw_int8": ULTRALYTICS_PAD,
    "yolov8_seg_transposed": 0,  # no metadata: letterbox with pad 0 is configured
    "yolo_end2end_seg": ULTRALYTICS_PAD,
}


def load(name: str, runtime: str = "auto", **keys):
    options = PreprocessOptions() if MODELS.get(name, ULTRALYTICS_PAD) == ULTRALYTICS_PAD else PreprocessOptions(resize="letterbox")
    return active_model(name, runtime=runtime, preprocess=options, **keys)


def planted_logits(index: int) -> np.ndarray:
    """[16, 16]: the mask logits box `index`'s coefficients make of the planted prototypes."""
    coefficients = np.zeros(planted.SEG_COEFFICIENTS, np.float32)
    coefficients[planted.SEG_BIAS_CHANNEL] = 1.0
    for channel, value in planted.SEG_BOX_COEFFICIENTS[index].items():
        coefficients[channel] = value
    return planted.seg_prototypes() @ coefficients


def expected_instance(index: int, cx: float, cy: float, w: float, h: float) -> np.ndarray:
    """[64, 64] bool, by hand: each prototype pixel covers 4x4 input pixels, and the planted logits step
    from -6 to +6 between two prototype pixels, so the upsampled mask's edge is that pixel edge; then
    the crop to the box (pixels from ceil(edge) on, as Ultralytics crops) and to the frame's rows."""
    inside = np.kron(planted_logits(index) > 0, np.ones((STRIDE, STRIDE), bool))
    ymin, xmin, ymax, xmax = cxcywh_to_yxyx(cx, cy, w, h)
    crop = np.zeros_like(inside)
    crop[max(math.ceil(ymin * SIZE), TOP):min(math.ceil(ymax * SIZE), TOP + NEW_H),
         max(math.ceil(xmin * SIZE), LEFT):min(math.ceil(xmax * SIZE), LEFT + NEW_W)] = True
    return inside & crop


def expected(red_mean: float, threshold: float = 0.5, dropped=(41,)):
    """(class, score, frame box, input mask) of the planted boxes that survive threshold and NMS, best first."""
    kept = []
    for index, class_id, cx, cy, w, h, score in planted.SEG_BOXES:
        score = red_mean if score is None else score
        if index in dropped or score < threshold:
            continue
        box = model_to_frame(cxcywh_to_yxyx(cx, cy, w, h), FRAME_H, FRAME_W)
        kept.append((class_id, score, box, expected_instance(index, cx, cy, w, h)))
    return sorted(kept, key=lambda item: -item[1])


def expected_class_map(kept) -> np.ndarray:
    class_map = np.full((SIZE, SIZE), -1, np.int16)
    for class_id, _, _, mask in reversed(kept):  # the best on top
        class_map[mask] = class_id
    return class_map


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


INPUT_PIXEL_OF_FRAME = NEW_H / FRAME_H  # input pixels per frame pixel (letterbox scale)


def class_map_in_frame(class_ids: np.ndarray, box_transform) -> np.ndarray:
    """The decoded class map seen at each frame pixel, through the mask's own box_transform."""
    ay, by, ax, bx = box_transform
    ys = ((np.arange(FRAME_H) + 0.5) / FRAME_H - by) / ay * SIZE
    xs = ((np.arange(FRAME_W) + 0.5) / FRAME_W - bx) / ax * SIZE
    return class_ids[np.ix_(np.clip(ys.astype(int), 0, SIZE - 1), np.clip(xs.astype(int), 0, SIZE - 1))]


def expected_in_frame(input_mask: np.ndarray) -> np.ndarray:
    """The same input-pixel mask at each frame pixel, by the letterbox arithmetic (input = frame x 0.4 + pad)."""
    ys = ((np.arange(FRAME_H) + 0.5) * INPUT_PIXEL_OF_FRAME + TOP).astype(int)
    xs = ((np.arange(FRAME_W) + 0.5) * (NEW_W / FRAME_W) + LEFT).astype(int)
    return input_mask[np.ix_(ys, xs)]


# float: masks within a corner pixel of the planted ones; int8: a box edge may move by one input pixel
TOLERANCE = {"yolov8_seg_nchw_int8": (0.85, 16)}  # (least IoU per class, mask pixels of coverage)


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("name", list(MODELS))
def test_planted_instances_come_back_with_their_masks_through_letterbox(name, runtime):
    active = load(name, runtime)
    assert active.task == "detection" and active.layout.layout == "yolo-seg"
    assert active.labels == list(planted.NAMES)
    least_iou, pixels = TOLERANCE.get(name, (0.95, 4))
    step = active.model.outputs[0].scale * 2 if name.endswith("int8") else 2e-5
    for colour, red in ((RED, 1.0), (BLUE, 0.0)):
        decoded = decode_frame(active, solid_frame(FRAME_H, FRAME_W, colour))
        want = expected(input_mean(FRAME_H, FRAME_W, red, MODELS[name]))
        assert [d.id for d in decoded.detections] == [w[0] for w in want], decoded.detections
        for detection, (class_id, score, box, mask) in zip(decoded.detections, want):
            assert detection.label == planted.NAMES[class_id]
            assert detection.score == pytest.approx(score, abs=max(step, 2e-5))
            np.testing.assert_allclose(detection.box, box, atol=max(step, 2e-5))
            assert detection.coverage == pytest.approx(mask.sum() / (NEW_H * NEW_W), abs=pixels / (NEW_H * NEW_W))
        class_ids = decoded.mask.class_ids
        assert class_ids.shape == (SIZE, SIZE) and decoded.mask.labels == planted.NAMES
        assert decoded.mask.box_transform == pytest.approx((SIZE / NEW_H, -TOP / NEW_H, 1.0, 0.0))
        want_map = expected_class_map(want)
        for class_id in range(len(planted.NAMES)):
            assert iou(class_ids == class_id, want_map == class_id) >= least_iou, (name, colour, class_id)
        assert not (class_ids[:TOP] >= 0).any() and not (class_ids[TOP + NEW_H:] >= 0).any(), "no mask in the padding"
        # on the frame: the mask's box transform puts each instance where the letterbox arithmetic does
        for class_id in {w[0] for w in want}:
            seen = class_map_in_frame(class_ids, decoded.mask.box_transform) == class_id
            assert iou(seen, expected_in_frame(want_map == class_id)) >= least_iou


def test_masks_are_made_for_the_boxes_nms_keeps_and_each_uses_its_own_coefficients():
    frame = solid_frame(FRAME_H, FRAME_W, BLUE)
    # box 40's mask has a hole (input rows 32-39, cols 36-43); box 41 (dropped by NMS) would fill its box
    hole = (slice(33, 36), slice(37, 43))  # above box 42's mask, which starts at row 36
    strict = decode_frame(load("yolov8_seg_float"), frame)
    assert (strict.mask.class_ids[hole] == -1).all()
    loose = decode_frame(load("yolov8_seg_float", iou=0.95), frame)  # NMS keeps box 41 now: its mask appears
    assert len(loose.detections) == len(strict.detections) + 1
    assert (loose.mask.class_ids[hole] == 1).all()
    # box 42 (blue, 0.7) sits on box 40 (green, 0.9): where the masks overlap the better one is on top,
    # and each detection's coverage counts its whole mask
    overlap = (slice(41, 45), slice(30, 35))
    assert (strict.mask.class_ids[overlap] == 1).all()
    index, _, cx, cy, w, h, _ = next(box for box in planted.SEG_BOXES if box[0] == 42)
    blue = next(d for d in strict.detections if d.label == "blue")
    whole = expected_instance(index, cx, cy, w, h).sum()
    assert blue.coverage == pytest.approx(whole / (NEW_H * NEW_W), abs=4 / (NEW_H * NEW_W))
    assert (strict.mask.class_ids == 2).sum() < whole - 50


def test_thresholds_per_label_and_max_detections_decide_which_masks_are_made():
    frame = solid_frame(FRAME_H, FRAME_W, RED)
    no_green = decode_frame(load("yolov8_seg_float", thresholds=(("green", 0.95),)), frame)
    assert [d.label for d in no_green.detections] == ["red", "blue"]
    assert not (no_green.mask.class_ids == 1).any() and (no_green.mask.class_ids == 2).sum() > 100  # no longer under box 40's
    (best,) = decode_frame(load("yolov8_seg_float", max_detections=1), frame).detections
    assert best.label == "green" and best.coverage > 0
    nothing = decode_frame(load("yolov8_seg_float", threshold=0.99), frame)
    assert nothing.detections == () and nothing.mask is None


def test_the_payload_carries_coverage_and_not_the_mask():
    decoded = decode_frame(load("yolov8_seg_float"), solid_frame(FRAME_H, FRAME_W, RED))
    prediction = Prediction("dev", "p", 1, 0.0, ModelRef("m", "0" * 64), "detection", 1.0, 2.0,
                            detections=decoded.detections, mask=decoded.mask)
    payload = prediction.to_payload()
    assert [set(d) for d in payload["detections"]] == [{"id", "label", "score", "box", "coverage"}] * 4
    assert "mask" not in payload and prediction.mask is decoded.mask
    without = Prediction("dev", "p", 1, 0.0, ModelRef("m", "0" * 64), "detection", 1.0, 2.0,
                         detections=tuple(d.__class__(d.id, d.label, d.score, d.box) for d in decoded.detections))
    grown = len(json.dumps(payload)) - len(json.dumps(without.to_payload()))
    assert 0 < grown <= 4 * len(', "coverage": 0.12345'), "one number per detection"


def test_auto_and_detection_both_recognise_a_seg_export_and_other_tasks_say_why_not():
    assert load("yolov8_seg_float", task="detection").layout.layout == "yolo-seg"
    why = load("yolov8_seg_float").layout.why
    assert "[1, 39, 84]" in why and "32 mask coefficients" in why and "[1, 16, 16, 32]" in why
    assert "channels first" in load("yolov8_seg_nchw_int8").layout.why
    with pytest.raises(DecodeError) as info:
        load("yolov8_seg_float", task="pose")
    assert "[[1, 16, 16, 32], [1, 39, 84]]" in str(info.value) and 'task = "raw"' in str(info.value)
    raw = load("yolov8_seg_float", task="raw")
    assert [o["shape"] for o in decode_frame(raw, solid_frame(FRAME_H, FRAME_W, RED)).outputs] == [[1, 16, 16, 32], [1, 39, 84]]


# --- bad input: outputs that do not fit together, labels that do not fit, crafted values -------------------
def test_prototypes_with_another_channel_count_than_the_coefficients_are_an_error_at_start():
    with pytest.raises(DecodeError) as info:
        load("yolov8_seg_bad_protos")
    message = str(info.value)
    assert "prototypes [1, 16, 16, 16] have 16 channels" in message and "metadata names 3 classes" in message
    assert "4 + 3 + 16 = 23 values" in message and "[1, 39, 84] holds 39" in message
    assert "32 mask coefficients for 16 prototypes" in message and "Use the file as Ultralytics exported it" in message


def test_prototypes_that_are_no_map_of_the_input_are_an_error_at_start():
    with pytest.raises(DecodeError) as info:
        load("yolov8_seg_bad_size")
    message = str(info.value)
    assert "prototypes [1, 10, 10, 32]" in message and "64x64 input" in message and "[1, 16, 16, 32]" in message


def test_labels_that_do_not_fit_the_class_count_name_both_numbers(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\nd\ne\n")
    with pytest.raises(ClassCountError) as info:
        load("yolov8_seg_transposed", labels=str(labels))
    message = str(info.value)
    assert "the labels have 5 entries" in message and "[1, 84, 39] holds 3 classes" in message and "yolo-seg" in message


def crafted(active, frame, change) -> list[np.ndarray]:
    """The model's real outputs for `frame`, copied, with `change(head [N, C] view, protos [h, w, nm])` applied."""
    buffer = active.acquire_buffer()
    active.preprocessor.prepare(frame, buffer)
    protos, head = (o.copy() for o in active.model.run(buffer))
    change(head[0].T, protos[0])
    return [protos, head]


@pytest.mark.parametrize("change", [
    lambda head, protos: head.__setitem__((40, slice(7, None)), np.nan),  # NaN mask coefficients
    lambda head, protos: protos.__setitem__(Ellipsis, np.inf),  # infinite prototypes
    lambda head, protos: protos.__setitem__((slice(0, 8), Ellipsis), np.nan),
    lambda head, protos: head.__setitem__((40, slice(0, 4)), [0.5, 0.5, 1e9, 1e9]),  # a box far beyond the input
    lambda head, protos: head.__setitem__((40, slice(0, 4)), [-3.0, -3.0, 0.5, 0.5]),  # a box outside it
    lambda head, protos: head.__setitem__((40, slice(0, 4)), [0.5, 0.5, 0.0, 0.0]),  # no area
    lambda head, protos: head.__setitem__((slice(None), slice(7, None)), 1e30),  # coefficients that overflow float32
], ids=["nan-coefficients", "inf-prototypes", "nan-prototypes", "huge-box", "outside-box", "empty-box", "overflow"])
def test_crafted_outputs_give_finite_small_results(change):
    active = load("yolov8_seg_float")
    frame = solid_frame(FRAME_H, FRAME_W, RED)
    decoded = active.decode(crafted(active, frame, change), active.preprocessor.prepare(frame, active.acquire_buffer()))
    assert decoded.detections, "the other boxes still come back"
    for detection in decoded.detections:
        assert 0.0 <= detection.coverage <= 1.0 and all(0.0 <= v <= 1.0 for v in detection.box)
    json.dumps([d.to_payload() for d in decoded.detections], allow_nan=False)
    class_ids = decoded.mask.class_ids
    assert class_ids.shape == (SIZE, SIZE) and set(np.unique(class_ids)) <= {-1, 0, 1, 2}
