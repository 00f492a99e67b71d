"""Make the digits detector: a small anchor-free detector trained on scenes of handwritten digits.

What it writes (default ``edge_agent/data/demo/``, package data):

* ``digits_detector_int8.tflite``  full-integer model, uint8 input [1,96,96,1] (grey, pixel/255),
                                   one output [1, 14, 144] in the Ultralytics YOLOv8 layout:
                                   cx, cy, w, h normalised to 0-1, then 10 class scores already
                                   passed through a sigmoid, no objectness; one column per cell
                                   of the 12x12 grid (stride 8). ``metadata.json`` (names, imgsz,
                                   task, stride) is appended as a zip member, as Ultralytics'
                                   exporter does, so ``task = "auto"`` and labels need no setting.
* ``digits-detect-demo.avi``       MJPG, 10 fps, 100 held-out scenes (96x96, BGR)
* ``digits-detect-demo.truth.jsonl``  one JSON line per frame: {"frame", "objects": [{"label",
                                   "box": [ymin, xmin, ymax, xmax] normalised to the frame]}]}
* ``digits-detect-eval/``          a held-out evaluation set in YOLO format: ``images/NNNN.jpg``
                                   (96x96 grey) and ``labels/NNNN.txt`` (``class cx cy w h``)
* ``digits_detector.json``         how it was made and what it scored

With ``--keras-out FILE`` it also saves the trained Keras model (the two raw heads, before the
YOLO-layout output that ``yolo_output`` adds; standard layers only, so it loads anywhere):
``tests/model_files/digits_detector.keras`` is that file, the source model the converter's
detection tests convert and validate (``source_model`` wraps it as the SavedModel they take).

Data: scikit-learn's bundled ``load_digits`` split exactly as ``make_demo.py`` splits it
(stratified, 25 % held out, random_state 0). Training scenes use training digits only, the
demo video and the evaluation set held-out digits only. A scene is a 96x96 grey canvas
(flat, gradient, noise, faint lines, sometimes inverted) with 0-4 digits at 16-40 px that do
not overlap; a digit's box is the tight box around its ink.

The numbers it reports come from the agent itself: each candidate model is decoded by the
pipeline's own decoder and scored by ``edge-agent evaluate``'s code (pycocotools' COCOeval).

Run it with the test venv (TensorFlow, this package, pycocotools)::

    .venv/bin/python models/make_detector.py [--out DIR] [--device-python PY] [--keras-out FILE]

Training uses 2 threads whatever the machine has, so that the result is the same everywhere.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's banner out of the summary

import cv2
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from edge_agent.atomic_file import write_file_atomically
from edge_agent.host.metadata import attach_files

# models/_common.py (Python puts a script's own folder first on sys.path)
from _common import REPO, batch1_converter, check_runtimes, convert_full_int8, make_parser

SEED = 0
LABELS = [str(d) for d in range(10)]
NUM_CLASSES = len(LABELS)
SIZE = 96  # model input and scene size (pixels)
STRIDE = 8
GRID = SIZE // STRIDE  # 12x12 cells
CELLS = GRID * GRID
MAX_SIDE = 0.5  # the largest distance a cell predicts from its centre to a box edge (fraction of the image)
DIGIT_PX = (16, 40)  # digit height range in the scene
DIGITS_PER_SCENE = ((0, 1, 2, 3, 4), (0.08, 0.22, 0.30, 0.25, 0.15))
INK_THRESHOLD = 4  # a load_digits pixel (0..16) at or above this is ink, for the tight box

TRAIN_SCENES_PER_EPOCH = 5000
EPOCHS = 10
BATCH = 32
CALIBRATION_SCENES = 300
EVAL_SCENES = 150
EVAL_JPEG_QUALITY = 90  # JPEG as most YOLO datasets; a third of PNG's size for these noisy scenes
VIDEO_SCENES = 100
VIDEO_FPS = 10
VIDEO_SCALE = 1  # the scenes as they are: upscaled frames would triple the file for nothing the demo shows
TRAIN_THREADS = 2


# --------------------------------------------------------------------------
# data: digits and scenes
# --------------------------------------------------------------------------
def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train digits, train labels, held-out digits, held-out labels); digits as 8x8 uint8 0..255.

    The same split as make_demo.py, so the held-out digits are the ones neither model saw."""
    digits = load_digits()
    raw = digits.images.astype(np.uint8)  # 0..16
    x_tr, x_te, y_tr, y_te = train_test_split(raw, digits.target, test_size=0.25, stratify=digits.target, random_state=0)
    return x_tr, y_tr, x_te, y_te


@dataclass(frozen=True)
class Scene:
    image: np.ndarray  # [SIZE, SIZE] uint8
    boxes: np.ndarray  # [n, 4] x1, y1, x2, y2 in pixels (float)
    classes: np.ndarray  # [n] int


def ink_box(digit16: np.ndarray) -> tuple[int, int, int, int]:
    """x0, y0, x1, y1 (exclusive) of the ink in an 8x8 digit, in source pixels."""
    rows = np.flatnonzero((digit16 >= INK_THRESHOLD).any(axis=1))
    cols = np.flatnonzero((digit16 >= INK_THRESHOLD).any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def render_background(rng: np.random.Generator) -> np.ndarray:
    base = rng.uniform(0, 90)
    ys, xs = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    image = base + rng.uniform(-40, 40) * (xs - 0.5) + rng.uniform(-40, 40) * (ys - 0.5)
    image = image.astype(np.float32)
    for _ in range(rng.choice(4, p=(0.55, 0.2, 0.15, 0.1))):  # faint strokes: not digits, but edges
        p0, p1 = rng.integers(0, SIZE, 2), rng.integers(0, SIZE, 2)
        cv2.line(image, (int(p0[0]), int(p0[1])), (int(p1[0]), int(p1[1])), float(base + rng.uniform(30, 80)),
                 int(rng.integers(1, 3)), cv2.LINE_AA)
    return image


def render_scene(rng: np.random.Generator, digits: np.ndarray, labels: np.ndarray) -> Scene:
    """A scene of 0-4 non-overlapping digits drawn from ``digits`` (8x8, 0..16)."""
    image = render_background(rng)
    count = rng.choice(DIGITS_PER_SCENE[0], p=DIGITS_PER_SCENE[1])
    boxes, classes = [], []
    for _ in range(count):
        for _attempt in range(20):
            index = int(rng.integers(len(digits)))
            height = rng.uniform(*DIGIT_PX)
            width = height * rng.uniform(0.8, 1.2)
            cell_h, cell_w = height / 8, width / 8
            x, y = rng.uniform(0, SIZE - width), rng.uniform(0, SIZE - height)
            bx0, by0, bx1, by1 = ink_box(digits[index])
            box = np.array([x + bx0 * cell_w, y + by0 * cell_h, x + bx1 * cell_w, y + by1 * cell_h])
            if all(_disjoint(box, other, margin=2.0) for other in boxes):
                break
        else:
            continue  # no free space: the scene keeps fewer digits
        _draw_digit(image, digits[index], x, y, width, height, ink=rng.uniform(150, 255))
        boxes.append(box)
        classes.append(int(labels[index]))
    image += rng.normal(0, rng.uniform(0, 10), image.shape).astype(np.float32)
    pixels = np.clip(np.round(image), 0, 255).astype(np.uint8)
    if rng.random() < 0.2:
        pixels = 255 - pixels  # dark ink on a light page
    return Scene(pixels, np.array(boxes, np.float32).reshape(-1, 4), np.array(classes, np.int64))


def _disjoint(a: np.ndarray, b: np.ndarray, margin: float) -> bool:
    return a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1]


def _draw_digit(image: np.ndarray, digit16: np.ndarray, x: float, y: float, width: float, height: float,
                ink: float) -> None:
    """Blend the digit (bilinear upscaling, sub-pixel placement by an affine warp) over ``image``."""
    scale = np.array([[width / 8, 0, x], [0, height / 8, y]], np.float32)
    # warpAffine maps source pixel centres (i + 0.5) to x + (i + 0.5) * w/8 when shifted by half a pixel
    scale[:, 2] += 0.5 * scale[:, :2].sum(axis=1) - 0.5
    alpha = cv2.warpAffine(digit16.astype(np.float32) / 16.0, scale, (SIZE, SIZE), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    image += alpha * (ink - image)


def render_scenes(rng: np.random.Generator, digits: np.ndarray, labels: np.ndarray, count: int) -> list[Scene]:
    return [render_scene(rng, digits, labels) for _ in range(count)]


# --------------------------------------------------------------------------
# targets: which cells answer for which digit
# --------------------------------------------------------------------------
ANCHORS_PX = np.stack(np.meshgrid((np.arange(GRID) + 0.5) * STRIDE, (np.arange(GRID) + 0.5) * STRIDE), -1).reshape(-1, 2)
CENTER_RADIUS_CELLS = 1.5


def scene_targets(scene: Scene) -> np.ndarray:
    """[CELLS, 4 + NUM_CLASSES + 1]: box x1,y1,x2,y2 (0-1), one-hot class, positive flag.

    A cell is positive for a digit when its centre lies inside the digit's box and within 1.5
    cells of the box centre (the cell holding the centre always is); a cell claimed by two
    digits answers for the smaller one."""
    targets = np.zeros((CELLS, 4 + NUM_CLASSES + 1), np.float32)
    claimed_area = np.full(CELLS, np.inf)
    ax, ay = ANCHORS_PX[:, 0], ANCHORS_PX[:, 1]
    for box, cls in zip(scene.boxes, scene.classes):
        x1, y1, x2, y2 = box
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        inside = (ax > x1) & (ax < x2) & (ay > y1) & (ay < y2)
        near = (np.abs(ax - cx) < CENTER_RADIUS_CELLS * STRIDE) & (np.abs(ay - cy) < CENTER_RADIUS_CELLS * STRIDE)
        positive = inside & near
        positive[int(min(cy // STRIDE, GRID - 1)) * GRID + int(min(cx // STRIDE, GRID - 1))] = True
        area = (x2 - x1) * (y2 - y1)
        take = positive & (area < claimed_area)
        claimed_area[take] = area
        targets[take, :4] = box / SIZE
        targets[take, 4:4 + NUM_CLASSES] = 0
        targets[take, 4 + cls] = 1
        targets[take, -1] = 1
    return targets


def batch_arrays(scenes: list[Scene]) -> tuple[np.ndarray, np.ndarray]:
    images = np.stack([s.image for s in scenes])[..., None].astype(np.float32) / 255.0
    return images, np.stack([scene_targets(s) for s in scenes])


# --------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------
def build_model():
    """Backbone to the stride-8 grid, then a box branch (l, t, r, b) and a class branch (logits)."""
    import keras
    from keras import layers

    def conv(x, filters, stride=1):
        x = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        return layers.ReLU()(x)

    image = keras.Input((SIZE, SIZE, 1), name="image")
    x = conv(image, 16, 2)  # 48
    x = conv(x, 24)
    x = conv(x, 32, 2)  # 24
    x = conv(x, 32)
    x = conv(x, 48, 2)  # 12: the grid
    x = conv(x, 64)
    x = conv(x, 64)
    box = layers.Conv2D(4, 1, name="ltrb")(conv(x, 48))
    cls = layers.Conv2D(NUM_CLASSES, 1, name="class_logits",
                        bias_initializer=keras.initializers.Constant(-4.0))(conv(x, 48))  # few cells hold a digit
    return keras.Model(image, [box, cls], name="digits_detector")


def decode_head(box_raw, cls_raw):
    """Raw head outputs -> (boxes x1,y1,x2,y2 normalised [B, CELLS, 4], class probabilities [B, CELLS, NC])."""
    import tensorflow as tf

    anchors = tf.constant(ANCHORS_PX / SIZE, tf.float32)
    ltrb = tf.sigmoid(tf.reshape(box_raw, (-1, CELLS, 4))) * MAX_SIDE
    xy1 = anchors - ltrb[..., :2]
    xy2 = anchors + ltrb[..., 2:]
    return tf.concat([xy1, xy2], -1), tf.sigmoid(tf.reshape(cls_raw, (-1, CELLS, NUM_CLASSES)))


def yolo_output(model, image):
    """The exported output: [B, 4 + NC, CELLS] = cx, cy, w, h, class scores (Ultralytics v8 layout)."""
    import tensorflow as tf

    box_raw, cls_raw = model(image, training=False)
    anchors = tf.constant(ANCHORS_PX / SIZE, tf.float32)
    ltrb = tf.sigmoid(tf.reshape(box_raw, (-1, CELLS, 4))) * MAX_SIDE
    centre = anchors + (ltrb[..., 2:] - ltrb[..., :2]) / 2
    size = ltrb[..., :2] + ltrb[..., 2:]
    scores = tf.sigmoid(tf.reshape(cls_raw, (-1, CELLS, NUM_CLASSES)))
    return tf.transpose(tf.concat([centre, size, scores], -1), (0, 2, 1))


def detection_loss(targets, box_raw, cls_raw):
    import tensorflow as tf

    boxes, probs = decode_head(box_raw, cls_raw)
    positive = targets[..., -1]
    count = tf.maximum(tf.reduce_sum(positive), 1.0)
    iou, giou = _iou_giou(boxes, targets[..., :4])
    # class targets on positive cells follow how well the cell's box fits (detached), so scores
    # rank boxes by quality as mAP@0.5:0.95 rewards; elsewhere 0
    quality = tf.stop_gradient(tf.clip_by_value(iou, 0.0, 1.0))
    cls_target = targets[..., 4:4 + NUM_CLASSES] * quality[..., None]
    logits = tf.reshape(cls_raw, (-1, CELLS, NUM_CLASSES))
    cls_loss = tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(labels=cls_target, logits=logits)) / count
    box_loss = tf.reduce_sum((1.0 - giou) * positive) / count
    return cls_loss + 5.0 * box_loss, cls_loss, box_loss


def _iou_giou(a, b):
    import tensorflow as tf

    ix1, iy1 = tf.maximum(a[..., 0], b[..., 0]), tf.maximum(a[..., 1], b[..., 1])
    ix2, iy2 = tf.minimum(a[..., 2], b[..., 2]), tf.minimum(a[..., 3], b[..., 3])
    inter = tf.maximum(ix2 - ix1, 0.0) * tf.maximum(iy2 - iy1, 0.0)
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter + 1e-9
    iou = inter / union
    hull = (tf.maximum(a[..., 2], b[..., 2]) - tf.minimum(a[..., 0], b[..., 0])) * (
        tf.maximum(a[..., 3], b[..., 3]) - tf.minimum(a[..., 1], b[..., 1])) + 1e-9
    return iou, iou - (hull - union) / hull


def train(model, digits: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> list[dict]:
    import keras
    import tensorflow as tf

    steps_per_epoch = TRAIN_SCENES_PER_EPOCH // BATCH
    schedule = keras.optimizers.schedules.CosineDecay(3e-3, EPOCHS * steps_per_epoch, alpha=0.02)
    optimizer = keras.optimizers.Adam(schedule)

    @tf.function
    def step(images, targets):
        with tf.GradientTape() as tape:
            box_raw, cls_raw = model(images, training=True)
            loss, cls_loss, box_loss = detection_loss(targets, box_raw, cls_raw)
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss, cls_loss, box_loss

    history = []
    for epoch in range(EPOCHS):
        started = time.time()
        images, targets = batch_arrays(render_scenes(rng, digits, labels, TRAIN_SCENES_PER_EPOCH))
        sums = np.zeros(3)
        for i in range(steps_per_epoch):
            batch = slice(i * BATCH, (i + 1) * BATCH)
            sums += [float(v) for v in step(tf.constant(images[batch]), tf.constant(targets[batch]))]
        mean = sums / steps_per_epoch
        history.append({"epoch": epoch + 1, "loss": round(mean[0], 4), "cls": round(mean[1], 4),
                        "box": round(mean[2], 4), "seconds": round(time.time() - started, 1)})
        print(f"epoch {epoch + 1:2d}/{EPOCHS}  loss {mean[0]:.4f}  cls {mean[1]:.4f}  box(1-GIoU) {mean[2]:.4f}  "
              f"{time.time() - started:.0f} s", flush=True)
    return history


# --------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------
def metadata_json() -> bytes:
    """What Ultralytics' exporter writes into a .tflite as metadata.json (the fields the agent reads)."""
    metadata = {
        "description": "edge-agent digits detector (models/make_detector.py): handwritten digits 0-9",
        "author": "edge-agent",
        "task": "detect",
        "stride": STRIDE,
        "batch": 1,
        "imgsz": [SIZE, SIZE],
        "names": {str(i): name for i, name in enumerate(LABELS)},
    }
    return (json.dumps(metadata, indent=2) + "\n").encode()


def save_source_model(model, folder: Path) -> None:
    """The detector as the SavedModel `edge-agent convert` takes: one serving signature, image
    [1, SIZE, SIZE, 1] float (pixel/255) -> output0 [1, 4 + NC, CELLS], the function `convert` exports."""
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", lambda image: {"output0": yolo_output(model, image)},
                         input_signature=[tf.TensorSpec([1, SIZE, SIZE, 1], tf.float32, name="image")])
    archive.write_out(str(folder), verbose=False)


def convert(model, calibration: np.ndarray, output_type: str) -> bytes:
    """Full-integer model: uint8 input; ``output_type`` int8 (quantised) or float32 output."""
    import tensorflow as tf

    converter = batch1_converter(lambda image: yolo_output(model, image), (SIZE, SIZE, 1), "image", "output0")

    def representative():
        for image in calibration:  # real training scenes, in a fixed order
            yield [image[None]]

    return convert_full_int8(converter, representative, "uint8", output_type)


# --------------------------------------------------------------------------
# held-out files: YOLO evaluation set, demo video, its ground truth
# --------------------------------------------------------------------------
def write_yolo_set(folder: Path, scenes: list[Scene]) -> None:
    """images/NNNN.jpg and labels/NNNN.txt (class cx cy w h, normalised), written atomically per file."""
    for sub in ("images", "labels"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for number, scene in enumerate(scenes):
        ok, jpeg = cv2.imencode(".jpg", scene.image, [cv2.IMWRITE_JPEG_QUALITY, EVAL_JPEG_QUALITY])
        assert ok
        write_file_atomically(folder / "images" / f"{number:04d}.jpg", jpeg.tobytes())
        lines = []
        for (x1, y1, x2, y2), cls in zip(scene.boxes, scene.classes):
            cx, cy, w, h = (x1 + x2) / 2 / SIZE, (y1 + y2) / 2 / SIZE, (x2 - x1) / SIZE, (y2 - y1) / SIZE
            lines.append(f"{cls} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n")
        write_file_atomically(folder / "labels" / f"{number:04d}.txt", "".join(lines).encode())


def write_video(path: Path, scenes: list[Scene]) -> None:
    """The scenes (upscaled by VIDEO_SCALE, INTER_NEAREST) as a BGR MJPG .avi (atomic)."""
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")  # VideoWriter picks the container from the suffix
    size = SIZE * VIDEO_SCALE
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"MJPG"), VIDEO_FPS, (size, size), True)
    if not writer.isOpened():
        raise RuntimeError("cv2.VideoWriter could not open an MJPG writer")
    for scene in scenes:
        big = cv2.resize(scene.image, (size, size), interpolation=cv2.INTER_NEAREST)
        writer.write(cv2.cvtColor(big, cv2.COLOR_GRAY2BGR))
    writer.release()
    os.replace(tmp, path)


def truth_lines(scenes: list[Scene]) -> bytes:
    """JSON lines, frame numbers from 1 as in the agent's payloads, boxes as the agent reports them."""
    lines = []
    for frame, scene in enumerate(scenes, 1):
        objects = [{"label": LABELS[cls], "box": [round(float(v) / SIZE, 4) for v in (y1, x1, y2, x2)]}
                   for (x1, y1, x2, y2), cls in zip(scene.boxes, scene.classes)]
        lines.append(json.dumps({"frame": frame, "objects": objects}) + "\n")
    return "".join(lines).encode()


# --------------------------------------------------------------------------
# the check: the agent's own preprocessing, decoder and evaluator (what `edge-agent evaluate` runs)
# --------------------------------------------------------------------------
def agent_map(model_path: Path, eval_folder: Path) -> tuple[float, float]:
    """(mAP@0.5, mAP@0.5:0.95) of the model on the YOLO folder, decoded as a pipeline decodes it."""
    from edge_agent.config import PipelineConfig, SourceSpec
    from edge_agent.evaluation.command import DETECTION_MAX, DETECTION_THRESHOLD
    from edge_agent.evaluation.detection import evaluate_detection
    from edge_agent.evaluation.detection_data import load_detection_dataset
    from edge_agent.service.active_model import build_active_model

    active = build_active_model(PipelineConfig(
        name="check", source=SourceSpec(uri=str(eval_folder)), model=str(model_path), task="auto",
        threshold=DETECTION_THRESHOLD, max_detections=DETECTION_MAX, num_threads=1,
    ))
    assert active.task == "detection" and active.labels == LABELS, (active.task, active.labels)
    dataset = load_detection_dataset(eval_folder, active.labels, NUM_CLASSES)
    assert not dataset.problems, dataset.problems
    report = evaluate_detection(active, dataset)
    return report.map50, report.map50_95


# --------------------------------------------------------------------------
def set_seeds(seed: int) -> None:
    import keras
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(TRAIN_THREADS)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    keras.utils.set_random_seed(seed)  # python, numpy and TF seeds at once
    tf.config.experimental.enable_op_determinism()


def main(argv=None) -> int:
    parser = make_parser(__doc__.splitlines()[0], REPO / "edge_agent" / "data" / "demo",
                         "python with tflite_runtime for the cross-runtime check")
    parser.add_argument("--keras-out", type=Path, metavar="FILE",
                        help="also save the trained Keras model here (.keras; tests/model_files/digits_detector.keras)")
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    set_seeds(SEED)
    x_tr, y_tr, x_te, y_te = load_split()
    train_rng, heldout_rng, calibration_rng = (np.random.default_rng([SEED, n]) for n in (1, 2, 3))
    model = build_model()
    train_started = time.time()
    history = train(model, x_tr, y_tr, train_rng)
    train_s = time.time() - train_started
    if args.keras_out:
        model.save(args.keras_out)

    heldout = render_scenes(heldout_rng, x_te, y_te, EVAL_SCENES + VIDEO_SCENES)
    eval_scenes, video_scenes = heldout[:EVAL_SCENES], heldout[EVAL_SCENES:]
    calibration = batch_arrays(render_scenes(calibration_rng, x_tr, y_tr, CALIBRATION_SCENES))[0]

    eval_folder = out / "digits-detect-eval"
    write_yolo_set(eval_folder, eval_scenes)
    scores = {}
    candidates = {}
    for output_type in ("int8", "float32"):
        content = attach_files(convert(model, calibration, output_type), {"metadata.json": metadata_json()})
        path = out / f".digits_detector_{output_type}_out.tflite"
        write_file_atomically(path, content)
        candidates[output_type] = path
        scores[output_type] = agent_map(path, eval_folder)
        print(f"output {output_type:7s}: held-out mAP@0.5 {scores[output_type][0]:.4f}  "
              f"mAP@0.5:0.95 {scores[output_type][1]:.4f}  ({len(content):,} bytes)", flush=True)
    # the int8 output unless the float one scores better (it keeps the model integer end to end)
    chosen = max(scores, key=lambda k: (round(scores[k][1], 4), k == "int8"))
    model_path = out / "digits_detector_int8.tflite"
    os.replace(candidates[chosen], model_path)
    for path in candidates.values():
        path.unlink(missing_ok=True)

    video = out / "digits-detect-demo.avi"
    write_video(video, video_scenes)
    write_file_atomically(out / "digits-detect-demo.truth.jsonl", truth_lines(video_scenes))

    summary = {
        "model": model_path.name,
        "input": f"uint8 [1,{SIZE},{SIZE},1] grey, float = pixel/255",
        "output": f"{'int8' if chosen == 'int8' else 'float32'} [1,{4 + NUM_CLASSES},{CELLS}] cx,cy,w,h (0-1), "
                  f"{NUM_CLASSES} sigmoid scores; stride {STRIDE}",
        "output_type_scores": {k: {"map50": round(v[0], 4), "map50_95": round(v[1], 4)} for k, v in scores.items()},
        "output_type": chosen,
        "heldout_map50": round(scores[chosen][0], 4),
        "heldout_map50_95": round(scores[chosen][1], 4),
        "heldout_scenes": EVAL_SCENES,
        "heldout_objects": int(sum(len(s.classes) for s in eval_scenes)),
        "video_frames": VIDEO_SCENES,
        "training": {"epochs": EPOCHS, "scenes_per_epoch": TRAIN_SCENES_PER_EPOCH, "batch": BATCH,
                     "threads": TRAIN_THREADS, "final_loss": history[-1]["loss"]},
        "made_by": "models/make_detector.py",
    }
    write_file_atomically(out / "digits_detector.json", (json.dumps(summary, indent=2) + "\n").encode())

    runtimes = check_runtimes([model_path], args.device_python or None)
    print(json.dumps(summary, indent=2))
    for runtime, result in runtimes.items():
        for path, message in result.items():
            print(f"{runtime:15s} {Path(path).name:30s} {message}")
    print(f"training took {train_s:.0f} s ({EPOCHS} epochs of {TRAIN_SCENES_PER_EPOCH} scenes, {TRAIN_THREADS} threads); "
          f"done in {time.time() - started:.0f} s")
    bad = [m for result in runtimes.values() for m in result.values() if not m.startswith("ok")]
    return 1 if bad or scores[chosen][0] < 0.8 else 0


if __name__ == "__main__":
    sys.exit(main())
