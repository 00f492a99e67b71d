"""Make the digits demo: a small int8 TFLite classifier plus a matching video.

What it writes (default ``edge_agent/data/demo/``, package data):

* ``digits_int8.tflite``    full-integer model, int8 input [1,8,8,1] and int8
                            output [1,10] (softmax probabilities, quantised)
* ``digits_float32.tflite`` the same network converted without quantisation
* ``labels.txt``            ``0``..``9``, one per line; also embedded in both
                            models as a zip appended to the flatbuffer, the
                            way the TFLite metadata populator attaches files
* ``digits-demo.avi``       MJPG, 20 fps, 200 frames, 160x160 BGR; frame i is
                            held-out test digit i upscaled x20 (INTER_NEAREST)
* ``digits-demo.truth.txt`` the true digit of frame i on line i
* ``digits.json``           held-out and video accuracies

Data: scikit-learn's bundled ``load_digits`` (8x8, values 0..16). Pixels are
mapped to the image domain as ``img_u8 = round(v * 255 / 16)`` and the model's
float input is ``img_u8 / 255`` so that a camera frame converted to gray and
shrunk to 8x8 feeds the model with the same preprocessing.

Run it with a Python that has TensorFlow and this package installed (the test
venv, ``make install-test``)::

    .venv/bin/python models/make_demo.py [--out DIR] [--device-python PY]

``--device-python`` (default ``.venv/bin/python`` when it exists) is used to
check that the models load and run in tflite_runtime as well as ai_edge_litert.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's banner out of the summary

import cv2
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from edge_agent.atomic_file import write_file_atomically
from edge_agent.host.metadata import LABELS_FILE, attach_files, labels_file_bytes
from edge_agent.runtime.tflite_file import read_model_file

# models/_common.py (Python puts a script's own folder first on sys.path)
from _common import REPO, batch1_converter, check_runtimes, convert_full_int8, make_parser

SEED = 0
LABELS = [str(d) for d in range(10)]
VIDEO_FRAMES = 200
VIDEO_FPS = 20
VIDEO_SCALE = 20  # 8x8 -> 160x160
# JPEG quality of the MJPG frames: the digits are flat 20x20 blocks, so a
# moderate quality keeps the file small while INTER_AREA averaging of each
# block still recovers the pixel value to within a few grey levels.
VIDEO_JPEG_QUALITY = 75


# --------------------------------------------------------------------------
# seeding
# --------------------------------------------------------------------------
def set_seeds(seed: int) -> None:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)  # python, numpy and TF seeds at once
    tf.config.experimental.enable_op_determinism()


# --------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------
def load_data():
    """Return (x_train, y_train, x_test, y_test) as uint8 images [N,8,8,1]."""
    digits = load_digits()
    img_u8 = np.round(digits.data * 255.0 / 16.0).astype(np.uint8).reshape(-1, 8, 8, 1)
    x_tr, x_te, y_tr, y_te = train_test_split(
        img_u8, digits.target, test_size=0.25, stratify=digits.target, random_state=0
    )
    return x_tr, y_tr.astype(np.int64), x_te, y_te.astype(np.int64)


def to_float(img_u8: np.ndarray) -> np.ndarray:
    return img_u8.astype(np.float32) / 255.0


# --------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------
def build_and_train(x_train: np.ndarray, y_train: np.ndarray):
    import keras
    from keras import layers

    model = keras.Sequential(
        [
            keras.Input(shape=(8, 8, 1), name="image"),
            layers.Conv2D(16, 3, padding="same", activation="relu"),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(2),  # 4x4
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.Flatten(),
            layers.Dense(64, activation="relu"),
            layers.Dropout(0.2),
            layers.Dense(10, activation="softmax", name="probs"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(2e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    # The data set is tiny (~1350 images), so 60 epochs take seconds.
    model.fit(to_float(x_train), y_train, epochs=60, batch_size=32, shuffle=True, verbose=0)
    return model


def converter(model):
    """Converter for the trained model with input [1,8,8,1] named ``image``."""
    return batch1_converter(lambda image: model(image, training=False), (8, 8, 1), "image")


def convert_float(model) -> bytes:
    return converter(model).convert()


def convert_int8(model, x_train: np.ndarray) -> bytes:
    def representative():
        # Every training image once, in a fixed order: calibrates the input
        # range to exactly [0,1] and the activations to what the data sees.
        for img in to_float(x_train):
            yield [img[None]]

    return convert_full_int8(converter(model), representative, "int8")


# --------------------------------------------------------------------------
# evaluation (ai_edge_litert, in-process)
# --------------------------------------------------------------------------
class Classifier:
    """Runs a .tflite classifier on float images in [0,1], (de)quantising."""

    def __init__(self, path: Path):
        from ai_edge_litert.interpreter import Interpreter

        self.interp = Interpreter(model_path=str(path), num_threads=1)
        self.interp.allocate_tensors()
        self.inp = self.interp.get_input_details()[0]
        self.out = self.interp.get_output_details()[0]

    def predict(self, img_f: np.ndarray) -> int:
        x = img_f[None].astype(np.float32)
        if self.inp["dtype"] != np.float32:
            scale, zp = self.inp["quantization"]
            info = np.iinfo(self.inp["dtype"])
            x = np.clip(np.round(x / scale + zp), info.min, info.max).astype(self.inp["dtype"])
        self.interp.set_tensor(self.inp["index"], x)
        self.interp.invoke()
        return int(np.argmax(self.interp.get_tensor(self.out["index"])[0]))

    def accuracy(self, imgs_f: np.ndarray, labels: np.ndarray) -> float:
        preds = np.array([self.predict(im) for im in imgs_f])
        return float(np.mean(preds == labels))


# --------------------------------------------------------------------------
# video
# --------------------------------------------------------------------------
def write_video(path: Path, frames_u8: np.ndarray) -> None:
    """Write 8x8 gray digits as a 160x160 BGR MJPG .avi (atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")  # VideoWriter picks the container from the suffix
    size = 8 * VIDEO_SCALE
    vw = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"MJPG"), VIDEO_FPS, (size, size), True)
    if not vw.isOpened():
        raise RuntimeError("cv2.VideoWriter could not open an MJPG writer")
    vw.set(cv2.VIDEOWRITER_PROP_QUALITY, VIDEO_JPEG_QUALITY)
    for img in frames_u8:
        big = cv2.resize(img[:, :, 0], (size, size), interpolation=cv2.INTER_NEAREST)
        vw.write(cv2.cvtColor(big, cv2.COLOR_GRAY2BGR))
    vw.release()
    os.replace(tmp, path)


def read_video_as_8x8(path: Path) -> np.ndarray:
    """Decode the video the way the daemon would: gray, INTER_AREA to 8x8."""
    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        out.append(cv2.resize(gray, (8, 8), interpolation=cv2.INTER_AREA)[:, :, None])
    cap.release()
    return np.stack(out)


# --------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = make_parser(
        __doc__.splitlines()[0], REPO / "edge_agent" / "data" / "demo", "python with tflite_runtime for the cross-runtime check"
    )
    args = ap.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    set_seeds(SEED)
    x_tr, y_tr, x_te, y_te = load_data()
    model = build_and_train(x_tr, y_tr)

    paths = {
        "float": out / "digits_float32.tflite",
        "int8": out / "digits_int8.tflite",
    }
    labels = {LABELS_FILE: labels_file_bytes(LABELS)}
    write_file_atomically(paths["float"], attach_files(convert_float(model), labels))
    write_file_atomically(paths["int8"], attach_files(convert_int8(model, x_tr), labels))
    write_file_atomically(out / LABELS_FILE, labels[LABELS_FILE])

    # The embedded labels must be readable exactly as the agent reads them.
    for p in paths.values():
        got = read_model_file(p).labels
        assert got == LABELS, (p, got)

    acc_float = Classifier(paths["float"]).accuracy(to_float(x_te), y_te)
    int8 = Classifier(paths["int8"])
    acc_int8 = int8.accuracy(to_float(x_te), y_te)

    video = out / "digits-demo.avi"
    write_video(video, x_te[:VIDEO_FRAMES])
    truth = y_te[:VIDEO_FRAMES]
    write_file_atomically(out / "digits-demo.truth.txt", "".join(f"{d}\n" for d in truth).encode())
    decoded = read_video_as_8x8(video)
    assert len(decoded) == VIDEO_FRAMES, len(decoded)
    acc_video = int8.accuracy(to_float(decoded), truth)
    max_pixel_err = int(np.abs(decoded.astype(int) - x_te[:VIDEO_FRAMES].astype(int)).max())

    summary = {
        "heldout_accuracy_float": round(acc_float, 4),
        "heldout_accuracy_int8": round(acc_int8, 4),
        "heldout_samples": int(len(y_te)),
        "video_accuracy_int8": round(acc_video, 4),
        "video_frames": VIDEO_FRAMES,
        "input": "8x8x1 gray, float = pixel/255",
        "made_by": "models/make_demo.py",
    }
    write_file_atomically(out / "digits.json", (json.dumps(summary, indent=2) + "\n").encode())

    runtimes = check_runtimes(list(paths.values()), args.device_python or None)

    print(json.dumps(summary, indent=2))
    print(f"video: max |decoded - original| pixel error = {max_pixel_err}")
    for rt, res in runtimes.items():
        for p, msg in res.items():
            print(f"{rt:15s} {Path(p).name:22s} {msg}")
    for f in sorted(out.iterdir()):
        print(f"{f.stat().st_size:9d}  {f}")
    print(f"done in {time.time() - t0:.1f}s")
    bad = [m for res in runtimes.values() for m in res.values() if not m.startswith("ok")]
    return 1 if bad or acc_int8 <= 0.9 else 0


if __name__ == "__main__":
    sys.exit(main())
