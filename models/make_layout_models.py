"""Make small .tflite models with the output LAYOUTS of popular model families, with known values planted.

No pretrained YOLO, MoveNet or DeepLab weights can be downloaded here, so each model is a real
TFLite graph whose last layer is set by hand: the input is average-pooled to its three channel
means (r, g, b in 0..1 after pixel/255), and a Dense layer maps them to the output, so

    output = bias + weights @ [r, g, b]

The bias plants fixed boxes, keypoints or class regions; one weight makes one box's score equal
to the frame's red mean, so a red frame and a blue frame give different, hand-computable
results (which also proves the input was filled in the right channel order and layout).

Files (tests/model_files/, one README line each, inside the "Layout models" section):
  yolov8_float.tflite          NHWC float input, [1, 7, 84] (v8: 4 + 3 classes, 84 = 64x64 grid), metadata.json
  yolov8_nchw_int8.tflite      NCHW int8 input [1, 3, 64, 64], int8 [1, 7, 84] (full integer), metadata.json
  yolov8_transposed.tflite     [1, 84, 7], labels attached the project's way (labels.txt), no metadata
  yolov5_float.tflite          [1, 252, 8] (v5: 3 anchors per cell, objectness), no metadata
  yolo_end2end.tflite          [1, 10, 6] normalised (onnx2tf style, NHWC), metadata.json with nms
  yolo_end2end_nchw_pixels.tflite  [1, 10, 6] in input pixels, NCHW input (litert-torch style)
  movenet_single_layout.tflite [1, 1, 17, 3]; movenet_multi_layout.tflite [1, 6, 56]
  yolov8_pose_layout.tflite    [1, 56, 84] with metadata.json (task pose, kpt_shape [17, 3])
  pose_13_keypoints.tflite     [1, 1, 13, 3]: a pose model with an unexpected keypoint count
  segmentation_scores.tflite   [1, 32, 32, 3] class logits; segmentation_ids.tflite [1, 32, 32] int32 ids
  yolov8_seg_float.tflite      YOLOv8-seg: prototypes [1, 16, 16, 32] (listed first) + head [1, 39, 84], NHWC float, metadata.json
  yolov8_seg_nchw_int8.tflite  the same full integer: NCHW int8 input, head [1, 39, 84] and prototypes [1, 32, 16, 16] int8
  yolov8_seg_transposed.tflite head [1, 84, 39] + prototypes [1, 16, 16, 32], labels.txt attached, no metadata
  yolo_end2end_seg.tflite      end-to-end YOLO-seg: [1, 10, 38] (x1, y1, x2, y2, score, class, 32 coefficients) + prototypes
  yolov8_seg_bad_protos.tflite bad input: prototypes [1, 16, 16, 16] beside a head with 32 coefficients per box
  yolov8_seg_bad_size.tflite   bad input: prototypes [1, 10, 10, 32], no whole fraction of the 64x64 input
With --mediapipe-wheel WHEEL (from `pip download mediapipe==0.10.14 --no-deps`), also copies MediaPipe's
face_detection_short_range.tflite and selfie_segmentation.tflite out of the wheel (Apache-2.0).
With --bench DIR, writes yolov8n_320_layout.tflite ([1, 3, 320, 320] -> [1, 84, 2100], as YOLOv8n at 320)
and yolov8n_seg_320_layout.tflite / yolov8n_seg_640_layout.tflite (YOLOv8n-seg's outputs at 320 and 640:
[1, 116, 2100] + [1, 80, 80, 32], [1, 116, 8400] + [1, 160, 160, 32]) into DIR for `edge-agent bench`;
they are not committed (2 to 8 MB).

Run with the test venv (TensorFlow, this package):  .venv/bin/python models/make_layout_models.py
The planted values are the constants below; tests/test_decode_*.py compute their expectations from them.
"""

from __future__ import annotations

import io
import json
import math
import os
import sys
import zipfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from edge_agent.atomic_file import write_file_atomically
from edge_agent.host.metadata import LABELS_FILE, attach_files, labels_file_bytes

from _common import REPO, convert_full_int8, make_parser, run_in_runtime, runtime_pythons

SIZE = 64  # every layout model takes a 64x64 image
GRID = 84  # anchor-free boxes of a 64x64 input: 8x8 + 4x4 + 2x2 (strides 8, 16, 32)
NAMES = ("red", "green", "blue")
# Planted YOLO boxes: (anchor index, class id, cx, cy, w, h, fixed score; None: score = the red mean)
YOLO_BOXES = (
    (10, 0, 0.25, 0.30, 0.20, 0.30, None),  # red frames only
    (40, 1, 0.60, 0.60, 0.30, 0.20, 0.90),
    (41, 1, 0.62, 0.61, 0.30, 0.20, 0.80),  # overlaps box 40 (same class): NMS removes it
    (42, 2, 0.60, 0.60, 0.30, 0.20, 0.70),  # same place as box 40, other class: NMS keeps it
    (70, 0, 0.80, 0.20, 0.10, 0.10, 0.30),  # below the default threshold 0.5
)
V5_OBJECTNESS = 0.95  # v5 boxes: objectness 0.95, class score such that obj x class = the score above
END2END_ROWS = 10
# MoveNet-style keypoints (y, x, score) of a standing figure; keypoint 0 (nose) scores the red mean
COCO_KEYPOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
FIGURE = tuple((0.10 + 0.05 * i, 0.40 + 0.01 * i, 0.80) for i in range(17))
MULTI_PEOPLE = ((0.05, 0.35, 0.95, 0.60, 0.85), (0.10, 0.70, 0.40, 0.90, 0.10))  # box ymin..xmax, score
POSE_ANCHOR = 20  # the YOLO-pose box: cx, cy, w, h, score, then FIGURE's keypoints as (x, y, visibility)
POSE_BOX = (0.50, 0.50, 0.40, 0.90, 0.90)
SEG_SIZE = 32
SEG_REGIONS = ((1, 8, 16, 4, 12), (2, 20, 28, 16, 30))  # class, rows y0:y1, cols x0:x1 of the 32x32 map

# YOLO-seg: the YOLO boxes plus one more that reaches into the letterbox padding (rows 0-7 of the input for
# a 4:3 frame), each followed by 32 mask coefficients; prototypes are 32 maps of 16x16 (1/4 of the input)
SEG_BOXES = YOLO_BOXES + ((60, 1, 0.85, 0.12, 0.20, 0.20, 0.60),)
SEG_PROTO = SIZE // 4
SEG_COEFFICIENTS = 32
SEG_LOGIT = 6.0  # inside a planted region; -6 outside, so each mask edge falls on a prototype pixel's edge
# per prototype channel: rectangles (rows y0:y1, cols x0:x1 of the 16x16 map) and the logit they add
SEG_PROTOTYPES = {
    0: ((2, 8, 2, 5, 2 * SEG_LOGIT),),  # box 10's: input rows 8-31, cols 8-19 (its box crops it)
    1: ((7, 12, 6, 11, 2 * SEG_LOGIT),),  # box 40's, minus channel 2's hole
    2: ((8, 10, 9, 11, 2 * SEG_LOGIT),),  # the hole: input rows 32-39, cols 36-43
    3: ((9, 12, 7, 12, 2 * SEG_LOGIT),),  # box 42's: overlaps box 40's mask
    4: ((0, 16, 0, 16, 2 * SEG_LOGIT),),  # everywhere: box 41 (NMS drops it) and box 60 (its box is its mask)
}
# per box index: coefficient per prototype channel (every other one 0); channel 5 is -6 everywhere, the bias
SEG_BIAS_CHANNEL = 5
SEG_BOX_COEFFICIENTS = {10: {0: 1.0}, 40: {1: 1.0, 2: -1.0}, 41: {4: 1.0}, 42: {3: 1.0}, 60: {4: 1.0}, 70: {0: 1.0}}

ULTRALYTICS_METADATA = {
    "description": "edge-agent layout test model", "author": "edge-agent", "version": "8.4.0",
    "license": "Apache-2.0", "stride": 32, "batch": 1, "imgsz": [SIZE, SIZE], "channels": 3,
}


# --------------------------------------------------------------------------------------------------
def yolo_v8_values(channels_first: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(bias [C, N], red weight [C, N]) for [1, 4 + nc, N]."""
    nc = len(NAMES)
    bias, red = np.zeros((4 + nc, GRID), np.float32), np.zeros((4 + nc, GRID), np.float32)
    for index, class_id, cx, cy, w, h, score in YOLO_BOXES:
        bias[:4, index] = cx, cy, w, h
        if score is None:
            red[4 + class_id, index] = 1.0
        else:
            bias[4 + class_id, index] = score
    return (bias, red) if channels_first else (bias.T.copy(), red.T.copy())


def yolo_v5_values() -> tuple[np.ndarray, np.ndarray]:
    """[N=3*GRID, 5 + nc]: the planted boxes on the first anchor of their cell, objectness x class = score."""
    nc = len(NAMES)
    bias, red = np.zeros((3 * GRID, 5 + nc), np.float32), np.zeros((3 * GRID, 5 + nc), np.float32)
    for index, class_id, cx, cy, w, h, score in YOLO_BOXES:
        row = 3 * index
        bias[row, :5] = cx, cy, w, h, V5_OBJECTNESS
        if score is None:
            red[row, 5 + class_id] = 1.0  # class score = the red mean: score = 0.95 x red
        else:
            bias[row, 5 + class_id] = score / V5_OBJECTNESS
    return bias, red


def end2end_values(pixels: bool) -> tuple[np.ndarray, np.ndarray]:
    """[K, 6] rows x1, y1, x2, y2, score, class of the boxes NMS keeps (box 41 is gone), zero-padded."""
    bias, red = np.zeros((END2END_ROWS, 6), np.float32), np.zeros((END2END_ROWS, 6), np.float32)
    unit = SIZE if pixels else 1.0
    row = 0
    for index, class_id, cx, cy, w, h, score in YOLO_BOXES:
        if index == 41:
            continue
        bias[row, :4] = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]) * unit
        bias[row, 5] = class_id
        if score is None:
            red[row, 4] = 1.0
        else:
            bias[row, 4] = score
        row += 1
    return bias, red


def movenet_single_values(keypoints: int = 17) -> tuple[np.ndarray, np.ndarray]:
    bias, red = np.zeros((1, keypoints, 3), np.float32), np.zeros((1, keypoints, 3), np.float32)
    for k in range(keypoints):
        bias[0, k] = FIGURE[k % 17]
    bias[0, 0, 2], red[0, 0, 2] = 0.0, 1.0  # the nose is seen in red frames only
    return bias, red


def movenet_multi_values() -> tuple[np.ndarray, np.ndarray]:
    bias = np.zeros((6, 56), np.float32)
    for person, (ymin, xmin, ymax, xmax, score) in enumerate(MULTI_PEOPLE):
        for k, (y, x, s) in enumerate(FIGURE):
            bias[person, 3 * k:3 * k + 3] = y + 0.02 * person, x + 0.3 * person, s
        bias[person, 51:56] = ymin, xmin, ymax, xmax, score
    return bias, np.zeros_like(bias)


def yolo_pose_values() -> tuple[np.ndarray, np.ndarray]:
    bias = np.zeros((56, GRID), np.float32)
    bias[:5, POSE_ANCHOR] = POSE_BOX
    for k, (y, x, s) in enumerate(FIGURE):
        bias[5 + 3 * k:8 + 3 * k, POSE_ANCHOR] = x, y, s
    return bias, np.zeros_like(bias)


def segmentation_values() -> tuple[np.ndarray, np.ndarray]:
    logits = np.zeros((SEG_SIZE, SEG_SIZE, 3), np.float32)
    logits[..., 0] = 2.0  # background everywhere else
    for class_id, y0, y1, x0, x1 in SEG_REGIONS:
        logits[y0:y1, x0:x1, class_id] = 5.0
    return logits, np.zeros_like(logits)


def seg_prototypes(channels: int = SEG_COEFFICIENTS, size: int = SEG_PROTO) -> np.ndarray:
    """[size, size, channels]: the planted regions, a -6 bias channel and noise on the channels no box uses.

    A mask's logit is sum(coefficient x prototype): the bias channel (coefficient 1) puts -6 everywhere
    and each region adds 12, so pixels are +6 inside and -6 outside (and inside a hole, 6 - 12)."""
    protos = np.random.default_rng(7).normal(0, 1, (size, size, channels)).astype(np.float32)
    protos[..., : SEG_BIAS_CHANNEL + 1] = 0.0
    protos[..., SEG_BIAS_CHANNEL] = -SEG_LOGIT
    for channel, regions in SEG_PROTOTYPES.items():
        for y0, y1, x0, x1, value in regions:
            protos[y0:y1, x0:x1, channel] += value
    return protos


def yolo_seg_values(channels_first: bool = True, coefficients: int = SEG_COEFFICIENTS) -> tuple[np.ndarray, np.ndarray]:
    """(bias, red weight) for the head [1, 4 + nc + nm, N] (or [1, N, 4 + nc + nm])."""
    nc = len(NAMES)
    bias, red = np.zeros((4 + nc + coefficients, GRID), np.float32), np.zeros((4 + nc + coefficients, GRID), np.float32)
    for index, class_id, cx, cy, w, h, score in SEG_BOXES:
        bias[:4, index] = cx, cy, w, h
        if score is None:
            red[4 + class_id, index] = 1.0
        else:
            bias[4 + class_id, index] = score
        bias[4 + nc + SEG_BIAS_CHANNEL, index] = 1.0
        for channel, value in SEG_BOX_COEFFICIENTS[index].items():
            bias[4 + nc + channel, index] = value
    return (bias, red) if channels_first else (bias.T.copy(), red.T.copy())


def end2end_seg_values() -> tuple[np.ndarray, np.ndarray]:
    """[K, 6 + nm]: the rows NMS keeps (box 41 is gone), x1, y1, x2, y2, score, class, coefficients."""
    bias, red = np.zeros((END2END_ROWS, 6 + SEG_COEFFICIENTS), np.float32), np.zeros((END2END_ROWS, 6 + SEG_COEFFICIENTS), np.float32)
    row = 0
    for index, class_id, cx, cy, w, h, score in SEG_BOXES:
        if index == 41:
            continue
        bias[row, :4] = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        bias[row, 5] = class_id
        if score is None:
            red[row, 4] = 1.0
        else:
            bias[row, 4] = score
        bias[row, 6 + SEG_BIAS_CHANNEL] = 1.0
        for channel, value in SEG_BOX_COEFFICIENTS[index].items():
            bias[row, 6 + channel] = value
        row += 1
    return bias, red


# --------------------------------------------------------------------------------------------------
def planted_function(bias: np.ndarray, red: np.ndarray, channels_first: bool, finish=None):
    """A tf function image -> bias + red x (red channel mean), shaped like `bias`."""
    import tensorflow as tf

    bias_t, red_t = tf.constant(bias[None]), tf.constant(red[None])

    def model(image):
        nhwc = tf.transpose(image, [0, 2, 3, 1]) if channels_first else image
        red_mean = tf.reduce_mean(nhwc[..., 0], axis=[1, 2])  # [1]
        out = bias_t + red_t * tf.reshape(red_mean, [1] + [1] * bias.ndim)
        return finish(out) if finish else out

    return model


def planted_seg_function(head: tuple[np.ndarray, np.ndarray], protos: np.ndarray, channels_first: bool,
                         protos_channels_first: bool, protos_first: bool):
    """A tf function image -> (head, prototypes), or (prototypes, head) when `protos_first`: two outputs
    in that order, as Ultralytics' TFLite files list them either way."""
    import tensorflow as tf

    head_fn = planted_function(*head, channels_first)
    protos_t = tf.constant(protos[None])
    height, width, channels = protos.shape

    def model(image):
        nhwc = tf.transpose(image, [0, 2, 3, 1]) if channels_first else image
        red_mean = tf.reduce_mean(nhwc[..., 0], axis=[1, 2])
        # the last channel (no box uses it) adds the red mean: with no input in them, the converter would fold
        # the prototypes into a constant output and leave it unquantised in a full-integer model
        red_plane = tf.pad(tf.fill([1, height, width, 1], red_mean[0]), [[0, 0], [0, 0], [0, 0], [channels - 1, 0]])
        maps = protos_t + red_plane
        if protos_channels_first:
            maps = tf.transpose(maps, [0, 3, 1, 2])
        boxes = head_fn(image)
        return (maps, boxes) if protos_first else (boxes, maps)

    return model


def convert(fn, channels_first: bool, int8: bool = False) -> bytes:
    import tensorflow as tf

    shape = [1, 3, SIZE, SIZE] if channels_first else [1, SIZE, SIZE, 3]
    concrete = tf.function(fn, input_signature=[tf.TensorSpec(shape, tf.float32, name="images")]).get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete])
    if not int8:
        return converter.convert()
    rng = np.random.default_rng(0)

    def representative():
        for _ in range(32):
            colour = rng.random(3).astype(np.float32)
            image = np.broadcast_to(colour, (1, SIZE, SIZE, 3)).copy()
            yield [image.transpose(0, 3, 1, 2).copy() if channels_first else image]

    return convert_full_int8(converter, representative, "int8")


def with_ultralytics_metadata(model: bytes, **fields) -> bytes:
    """Append metadata.json as Ultralytics' exporter does (a deflated zip entry after the flatbuffer)."""
    metadata = dict(ULTRALYTICS_METADATA, **fields)
    buffer = io.BytesIO(model)
    buffer.seek(0, io.SEEK_END)
    with zipfile.ZipFile(buffer, "a", zipfile.ZIP_DEFLATED) as archive:
        entry = zipfile.ZipInfo("metadata.json", date_time=(1980, 1, 1, 0, 0, 0))  # reproducible bytes
        archive.writestr(entry, json.dumps(metadata, indent=2), compress_type=zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def names_dict(names) -> dict[int, str]:
    return dict(enumerate(names))


def build_models() -> dict[str, tuple[bytes, str]]:
    import tensorflow as tf

    v8 = yolo_v8_values()
    detect = {"task": "detect", "names": names_dict(NAMES), "args": {"nms": False}}
    e2e_meta = {"task": "detect", "names": names_dict(NAMES), "args": {"nms": True}, "end2end": True}
    pose_meta = {"task": "pose", "names": {0: "person"}, "kpt_shape": [17, 3], "args": {"nms": False}}
    planted = "planted boxes (models/make_layout_models.py YOLO_BOXES; box 10 scores the red mean)"
    segment = {"task": "segment", "names": names_dict(NAMES), "args": {"nms": False}}
    seg_e2e = {"task": "segment", "names": names_dict(NAMES), "args": {"nms": True}, "end2end": True}
    seg_planted = "planted boxes and masks (models/make_layout_models.py SEG_BOXES, SEG_PROTOTYPES)"
    protos = seg_prototypes()
    return {
        "yolov8_float.tflite": (
            with_ultralytics_metadata(convert(planted_function(*v8, False), False), **detect),
            f"YOLOv8 layout [1, 7, 84] float, NHWC float input [1, 64, 64, 3], {planted}, Ultralytics metadata.json "
            "(names red/green/blue, imgsz 64, task detect)."),
        "yolov8_nchw_int8.tflite": (
            with_ultralytics_metadata(convert(planted_function(*v8, True), True, int8=True), **detect),
            f"YOLOv8 layout [1, 7, 84] int8, NCHW int8 input [1, 3, 64, 64] (full integer, like "
            f"*_full_integer_quant), {planted}, Ultralytics metadata.json."),
        "yolov8_transposed.tflite": (
            attach_files(convert(planted_function(*yolo_v8_values(False), False), False),
                         {LABELS_FILE: labels_file_bytes(list(NAMES))}),
            f"YOLOv8 transposed layout [1, 84, 7] float, NHWC input, {planted}, labels.txt attached, no metadata."),
        "yolov5_float.tflite": (
            convert(planted_function(*yolo_v5_values(), False), False),
            "YOLOv5 layout [1, 252, 8] float (3 anchors per cell, objectness 0.95 x class score), NHWC input, "
            "the planted boxes on anchor 3 x index, no metadata or labels."),
        "yolo_end2end.tflite": (
            with_ultralytics_metadata(convert(planted_function(*end2end_values(False), False), False), **e2e_meta),
            "end-to-end layout [1, 10, 6] float (x1, y1, x2, y2, score, class normalised; zero rows after the 4 "
            "boxes NMS keeps), NHWC input, Ultralytics metadata.json with nms."),
        "yolo_end2end_nchw_pixels.tflite": (
            with_ultralytics_metadata(convert(planted_function(*end2end_values(True), True), True), **e2e_meta),
            "end-to-end layout [1, 10, 6] float in input pixels (litert-torch style), NCHW float input, "
            "Ultralytics metadata.json with nms."),
        "movenet_single_layout.tflite": (
            convert(planted_function(*movenet_single_values(), False), False),
            "MoveNet single-pose layout [1, 1, 17, 3] (y, x, score) float; the nose's score is the red mean."),
        "movenet_multi_layout.tflite": (
            convert(planted_function(*movenet_multi_values(), False), False),
            "MoveNet multi-pose layout [1, 6, 56] float: 2 planted people (scores 0.85 and 0.10), 4 empty rows."),
        "yolov8_pose_layout.tflite": (
            with_ultralytics_metadata(convert(planted_function(*yolo_pose_values(), False), False), **pose_meta),
            "YOLOv8-pose layout [1, 56, 84] float (box, score, 17 x (x, y, visibility)), one planted person at "
            "anchor 20, Ultralytics metadata.json (task pose, kpt_shape [17, 3])."),
        "pose_13_keypoints.tflite": (
            convert(planted_function(*movenet_single_values(13), False), False),
            "bad input: a MoveNet-like [1, 1, 13, 3] output (13 keypoints, not COCO's 17)."),
        "segmentation_scores.tflite": (
            convert(planted_function(*segmentation_values(), False), False),
            "segmentation layout [1, 32, 32, 3] float logits: class 1 in rows 8-15 x cols 4-11, class 2 in "
            "rows 20-27 x cols 16-29, class 0 elsewhere."),
        "segmentation_ids.tflite": (
            convert(planted_function(*segmentation_values(), False, finish=lambda x: tf.cast(
                tf.argmax(x, axis=-1), tf.int32)), False),
            "segmentation layout [1, 32, 32] int32 class ids (argmax inside the model), same regions."),
        "yolov8_seg_float.tflite": (
            with_ultralytics_metadata(convert(planted_seg_function(yolo_seg_values(), protos, False, False, True),
                                              False), **segment),
            f"YOLOv8-seg layout, prototypes [1, 16, 16, 32] listed first, head [1, 39, 84] float (4 + 3 classes + 32 "
            f"mask coefficients), NHWC float input, {seg_planted}, Ultralytics metadata.json (task segment)."),
        "yolov8_seg_nchw_int8.tflite": (
            with_ultralytics_metadata(convert(planted_seg_function(yolo_seg_values(), protos, True, True, False),
                                              True, int8=True), **segment),
            f"YOLOv8-seg layout full integer: NCHW int8 input [1, 3, 64, 64], int8 head [1, 39, 84] and int8 prototypes "
            f"[1, 32, 16, 16] (channels first, as LiteRT exports), {seg_planted}, Ultralytics metadata.json."),
        "yolov8_seg_transposed.tflite": (
            attach_files(convert(planted_seg_function(yolo_seg_values(False), protos, False, False, False), False),
                         {LABELS_FILE: labels_file_bytes(list(NAMES))}),
            f"YOLOv8-seg transposed head [1, 84, 39] + prototypes [1, 16, 16, 32] float, NHWC input, {seg_planted}, "
            "labels.txt attached, no metadata."),
        "yolo_end2end_seg.tflite": (
            with_ultralytics_metadata(convert(planted_seg_function(end2end_seg_values(), protos, False, False, False),
                                              False), **seg_e2e),
            f"end-to-end YOLO-seg [1, 10, 38] (x1, y1, x2, y2, score, class, 32 coefficients; zero rows after the "
            f"5 kept) + prototypes [1, 16, 16, 32] float, NHWC input, {seg_planted}, metadata.json with nms."),
        "yolov8_seg_bad_protos.tflite": (
            with_ultralytics_metadata(convert(planted_seg_function(yolo_seg_values(), protos[..., :16], False, False,
                                                                   False), False), **segment),
            "bad input: a YOLOv8-seg head [1, 39, 84] (32 coefficients per box) beside prototypes [1, 16, 16, 16], "
            "Ultralytics metadata.json (3 names)."),
        "yolov8_seg_bad_size.tflite": (
            with_ultralytics_metadata(convert(planted_seg_function(yolo_seg_values(), protos[:10, :10], False, False,
                                                                   False), False), **segment),
            "bad input: a YOLOv8-seg head [1, 39, 84] beside prototypes [1, 10, 10, 32] (64 / 10 is no whole number), "
            "Ultralytics metadata.json."),
    }


def bench_model() -> bytes:
    """YOLOv8n-320's output layout [1, 84, 2100] from an NCHW [1, 3, 320, 320] float input, with 30 planted
    boxes in 10 overlapping clusters and low-score noise everywhere (what NMS meets in a busy scene)."""
    import tensorflow as tf

    rng = np.random.default_rng(320)
    boxes, classes = 2100, 80
    bias = np.zeros((4 + classes, boxes), np.float32)
    bias[:4] = rng.random((4, boxes)) * [[1], [1], [0.3], [0.3]]
    bias[4:] = rng.random((classes, boxes)) * 0.3  # noise below the default threshold
    for cluster in range(10):
        centre = rng.random(2) * 0.8 + 0.1
        for member in range(3):
            index = rng.integers(boxes)
            bias[:4, index] = *(centre + rng.normal(0, 0.01, 2)), 0.2, 0.2
            bias[4 + cluster % classes, index] = 0.6 + 0.1 * member
    bias_t = tf.constant(bias[None])

    def model(image):
        return bias_t + 0.0 * tf.reduce_mean(image)

    concrete = tf.function(model, input_signature=[tf.TensorSpec([1, 3, 320, 320], tf.float32, name="images")]).get_concrete_function()
    converted = tf.lite.TFLiteConverter.from_concrete_functions([concrete]).convert()
    return with_ultralytics_metadata(converted, task="detect", imgsz=[320, 320], names=names_dict(f"class{i}" for i in range(classes)))


def bench_seg_model(size: int) -> bytes:
    """YOLOv8n-seg's outputs at `size` from an NHWC [1, size, size, 3] float input (onnx2tf style): the head
    [1, 116, N] with 30 planted boxes in 10 overlapping clusters (10 survive NMS, each 0.2 x 0.2 of the
    input) and low-score noise, random mask coefficients, and random prototypes [1, size/4, size/4, 32]
    smoothed like real ones, so each kept box's mask covers part of it."""
    import cv2
    import tensorflow as tf

    rng = np.random.default_rng(size)
    boxes = sum(math.ceil(size / s) ** 2 for s in (8, 16, 32))
    classes, coefficients = 80, 32
    head = np.zeros((4 + classes + coefficients, boxes), np.float32)
    head[:4] = rng.random((4, boxes)) * [[1], [1], [0.3], [0.3]]
    head[4:4 + classes] = rng.random((classes, boxes)) * 0.3  # noise below the default threshold
    head[4 + classes:] = rng.normal(0, 1, (coefficients, boxes))
    for cluster in range(10):
        centre = rng.random(2) * 0.8 + 0.1
        for member in range(3):
            index = rng.integers(boxes)
            head[:4, index] = *(centre + rng.normal(0, 0.01, 2)), 0.2, 0.2
            head[4 + cluster % classes, index] = 0.6 + 0.1 * member
    side = size // 4
    noise = rng.normal(0, 1, (side, side, coefficients)).astype(np.float32)
    protos = np.stack([cv2.GaussianBlur(noise[..., c], (0, 0), 3) for c in range(coefficients)], axis=-1) * 3
    head_t, protos_t = tf.constant(head[None]), tf.constant(protos[None])

    def model(image):
        mean = tf.reduce_mean(image)
        return protos_t + 0.0 * mean, head_t + 0.0 * mean

    concrete = tf.function(model, input_signature=[tf.TensorSpec([1, size, size, 3], tf.float32, name="images")]).get_concrete_function()
    converted = tf.lite.TFLiteConverter.from_concrete_functions([concrete]).convert()
    return with_ultralytics_metadata(converted, task="segment", imgsz=[size, size],
                                     names=names_dict(f"class{i}" for i in range(classes)))


def copy_mediapipe(wheel: Path, out: Path) -> dict[str, str]:
    members = {
        "face_detection_short_range.tflite": "mediapipe/modules/face_detection/face_detection_short_range.tflite",
        "selfie_segmentation.tflite": "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite",
    }
    with zipfile.ZipFile(wheel) as archive:
        for name, member in members.items():
            write_file_atomically(out / name, archive.read(member))
        licence = next(n for n in archive.namelist() if n.endswith(".dist-info/LICENSE"))
        write_file_atomically(out / "LICENSE.mediapipe", archive.read(licence))  # Apache-2.0 asks for a copy
    source = (f"from `{wheel.name}` (PyPI, `pip download mediapipe==0.10.14 --no-deps`), {{}}; MediaPipe, Apache-2.0 "
              "(licence text: `LICENSE.mediapipe`)")
    return {
        "face_detection_short_range.tflite": source.format(members["face_detection_short_range.tflite"])
        + ". BlazeFace short range: input [1, 128, 128, 3] float in [-1, 1], outputs regressors [1, 896, 16] and "
          "classificators [1, 896, 1].",
        "selfie_segmentation.tflite": source.format(members["selfie_segmentation.tflite"])
        + ". Input [1, 256, 256, 3] float in [0, 1], output [1, 256, 256, 1] person probability; uses the custom op "
          "Convolution2DTransposeBias, which LiteRT has and tflite-runtime 2.14 does not.",
    }


_CHECK = r"""
import json, sys
import numpy as np
interpreter = Interpreter(model_path=sys.argv[2])
interpreter.allocate_tensors()
spec = interpreter.get_input_details()[0]
interpreter.set_tensor(spec["index"], np.zeros(spec["shape"], spec["dtype"]))
interpreter.invoke()
outputs = [[list(map(int, d["shape"])), d["dtype"].__name__] for d in interpreter.get_output_details()]
print(json.dumps({"input": [list(map(int, spec["shape"])), spec["dtype"].__name__], "outputs": outputs}))
"""


def check(out: Path, names: list[str], device_python: str | None) -> dict[str, dict[str, str]]:
    results: dict[str, dict[str, str]] = {}
    for runtime, python in runtime_pythons(device_python):
        for name in names:
            done = run_in_runtime(python, runtime, _CHECK, [str(out / name)])
            if done.returncode == 0:
                info = json.loads(done.stdout.strip().splitlines()[-1])
                results.setdefault(name, {})[runtime] = f"in {info['input'][0]} {info['input'][1]}, out " + ", ".join(
                    f"{shape} {dtype}" for shape, dtype in info["outputs"])
            else:
                last = (done.stderr.strip().splitlines() or ["failed"])[-1]
                results.setdefault(name, {})[runtime] = f"FAILS: {last[:160]}"
    return results


SECTION = "## Layout models"


def update_readme(out: Path, descriptions: dict[str, str], checks: dict[str, dict[str, str]]) -> None:
    readme = out / "README.md"
    text = readme.read_text() if readme.exists() else "# Test models\n"
    head = text.split(SECTION)[0].rstrip() + "\n\n"
    lines = [SECTION, "",
             "Generated by `models/make_layout_models.py` (planted values, see its docstring; do not edit by hand).",
             "Each line: what the file is, then what each runtime reports on a zero input.", ""]
    for name, what in descriptions.items():
        line = f"- `{name}` ({(out / name).stat().st_size} B): {what}"
        for runtime, result in checks.get(name, {}).items():
            line += f" **{runtime}**: {result}."
        lines.append(line)
    write_file_atomically(readme, (head + "\n".join(lines) + "\n").encode())


def main(argv=None) -> int:
    parser = make_parser(__doc__.splitlines()[0], REPO / "tests" / "model_files", "python with tflite_runtime")
    parser.add_argument("--mediapipe-wheel", type=Path, help="a mediapipe 0.10.x wheel to copy the two MediaPipe models from")
    parser.add_argument("--bench", type=Path, help="also write yolov8n_320_layout.tflite into this folder")
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    models = build_models()
    for name, (data, _) in models.items():
        write_file_atomically(out / name, data)
    descriptions = {name: what for name, (_, what) in models.items()}
    if args.mediapipe_wheel:
        descriptions.update(copy_mediapipe(args.mediapipe_wheel, out))
    else:
        previous = (out / "README.md").read_text() if (out / "README.md").exists() else ""
        for name in ("face_detection_short_range.tflite", "selfie_segmentation.tflite"):
            line = next((l for l in previous.splitlines() if l.startswith(f"- `{name}`")), None)
            if line and (out / name).exists():  # keep the MediaPipe lines as they were
                descriptions[name] = line.split("): ", 1)[1].split(" **")[0]
    checks = check(out, list(descriptions), args.device_python or None)
    update_readme(out, descriptions, checks)
    if args.bench:
        args.bench.mkdir(parents=True, exist_ok=True)
        write_file_atomically(args.bench / "yolov8n_320_layout.tflite", bench_model())
        print(f"wrote {args.bench / 'yolov8n_320_layout.tflite'}")
        for size in (320, 640):
            write_file_atomically(args.bench / f"yolov8n_seg_{size}_layout.tflite", bench_seg_model(size))
            print(f"wrote {args.bench / f'yolov8n_seg_{size}_layout.tflite'}")
    for name in descriptions:
        print(f"{(out / name).stat().st_size:8d}  {name}  {checks.get(name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
