"""Make realistic-size benchmark models: MobileNetV2 224x224x3 as .tflite.

What it writes (default ``models/bench/``, not committed -- regenerate):

* ``mobilenet_v2_float32.tflite``  float32 in [1,224,224,3] -> softmax [1,1000]
* ``mobilenet_v2_int8.tflite``     full-integer, int8 input and int8 output

The network is ``keras.applications.MobileNetV2(weights=None)`` with seeded
random initial weights (no downloads), so predictions are meaningless; the
point is a model with the size, op mix and latency of a real one. Its float
input is MobileNetV2's usual ``pixel / 127.5 - 1`` (range [-1, 1]); the int8
model is calibrated on random crops of the photos bundled with scikit-image,
so its quantisation ranges come from real images.

Run it with a Python that has TensorFlow and this package installed (the test
venv, ``make install-test``)::

    .venv/bin/python models/make_bench_models.py [--out DIR] [--device-python PY]

It prints each file's size and single-thread invoke time in ai_edge_litert
(and in tflite_runtime via ``--device-python``, default ``.venv/bin/python``
when it exists).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's banner out of the summary

import numpy as np

from edge_agent.atomic_file import write_file_atomically

# models/_common.py (Python puts a script's own folder first on sys.path)
from _common import REPO, batch1_converter, convert_full_int8, make_parser, run_in_runtime, runtime_pythons

SEED = 0
SIZE = 224
CALIBRATION_IMAGES = 100
# Colour and gray photos that ship inside scikit-image (no download needed).
PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "immunohistochemistry",
    "camera",
    "coins",
    "moon",
    "page",
    "clock",
    "brick",
    "grass",
    "gravel",
)


# --------------------------------------------------------------------------
def load_photos() -> list[np.ndarray]:
    """The bundled scikit-image photos as HxWx3 uint8 RGB."""
    import skimage.data

    photos = []
    for name in PHOTOS:
        img = getattr(skimage.data, name)()
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        photos.append(img[:, :, :3].astype(np.uint8))
    return photos


def calibration_images(n: int = CALIBRATION_IMAGES):
    """Random square crops (30-100% of the short side), resized to 224x224.

    Yields float32 [1,224,224,3] in MobileNetV2's [-1,1] input range.
    """
    import cv2

    rng = np.random.default_rng(SEED)
    photos = load_photos()
    for _ in range(n):
        img = photos[rng.integers(len(photos))]
        h, w = img.shape[:2]
        side = int(min(h, w) * rng.uniform(0.3, 1.0))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = cv2.resize(img[y : y + side, x : x + side], (SIZE, SIZE), interpolation=cv2.INTER_AREA)
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        yield [(crop.astype(np.float32) / 127.5 - 1.0)[None]]


# --------------------------------------------------------------------------
def build_model():
    import keras

    keras.utils.set_random_seed(SEED)  # the initial weights are the model
    model = keras.applications.MobileNetV2(
        input_shape=(SIZE, SIZE, 3), weights=None, classes=1000, classifier_activation="softmax"
    )
    images = np.concatenate([b[0] for b in calibration_images(16)])
    calibrate_batchnorm(model, images)
    calibrate_classifier(model, images)
    return model


def calibrate_batchnorm(model, images: np.ndarray) -> None:
    """Set every BatchNorm's moving mean/variance from real activations.

    Freshly initialised, each BN assumes mean 0 / variance 1 while the conv
    before it shrinks the signal, so activations fade to ~1e-12 by the last
    block and the output is a constant 0.001 for every input -- useless for
    int8 calibration. Normalising with the statistics each BN actually sees
    (in network order, since each fix changes what later layers see) gives
    unit-scale activations throughout, like a trained network, and an output
    that depends on the image.
    """
    import keras

    for bn in [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]:
        acts = np.asarray(keras.Model(model.inputs, bn.input)([images], training=False))
        bn.moving_mean.assign(acts.mean(axis=(0, 1, 2)))
        bn.moving_variance.assign(acts.var(axis=(0, 1, 2)))


def calibrate_classifier(model, images: np.ndarray, logit_std: float = 4.0) -> None:
    """Make the random classifier's softmax image-dependent and peaked.

    Random pooled features share a large common component, so the random
    Dense layer gives nearly the same, nearly uniform (max ~0.004) softmax for
    every image -- which int8 (output step 1/256) cannot even resolve. Centre
    the features (bias = -mean @ W) and scale W so logits have a std of
    ``logit_std``: top-1 then varies with the image and max probabilities
    look like a real classifier's (~0.1..0.9).
    """
    import keras

    dense = model.layers[-1]
    feats = np.asarray(keras.Model(model.inputs, dense.input)([images], training=False))
    w = dense.kernel.numpy()
    centred = (feats - feats.mean(axis=0)) @ w
    k = logit_std / centred.std()
    dense.kernel.assign(w * k)
    dense.bias.assign(-k * feats.mean(axis=0) @ w)


def converter(model):
    """Converter for the network with input [1,224,224,3] named ``input``."""
    return batch1_converter(lambda image: model(image, training=False), (SIZE, SIZE, 3), "input")


def convert_float(model) -> bytes:
    return converter(model).convert()


def convert_int8(model) -> bytes:
    # int8 in and out, like edge_agent/data/demo/digits_int8.tflite.
    return convert_full_int8(converter(model), calibration_images, "int8")


# --------------------------------------------------------------------------
# timing, in a fresh process per runtime so neither affects the other
# --------------------------------------------------------------------------
_BENCH_SNIPPET = r"""
import json, sys, time, numpy as np
path, runs = sys.argv[2], int(sys.argv[3])
it = Interpreter(model_path=path, num_threads=1)
it.allocate_tensors()
inp, out = it.get_input_details()[0], it.get_output_details()[0]
rng = np.random.default_rng(0)
if np.dtype(inp["dtype"]).kind == "f":
    x = rng.uniform(-1, 1, inp["shape"]).astype(inp["dtype"])
else:
    x = rng.integers(-128, 128, inp["shape"]).astype(inp["dtype"])
it.set_tensor(inp["index"], x)
for _ in range(3):  # warm-up: first invokes pay for delegate/packing set-up
    it.invoke()
ms = []
for _ in range(runs):
    t = time.perf_counter(); it.invoke(); ms.append((time.perf_counter() - t) * 1e3)
print(json.dumps({"median_ms": float(np.median(ms)), "min_ms": float(np.min(ms)),
                  "input": f"{list(inp['shape'])} {np.dtype(inp['dtype']).name} q={inp['quantization']}",
                  "output": f"{list(out['shape'])} {np.dtype(out['dtype']).name} q={out['quantization']}"}))
"""


def bench(py: str, runtime: str, path: Path, runs: int) -> dict:
    proc = run_in_runtime(py, runtime, _BENCH_SNIPPET, [str(path), str(runs)])
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc={proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def top1_agreement(float_path: Path, int8_path: Path, n: int = 40) -> tuple[float, int, float]:
    """Float vs int8 top-1 agreement on photo crops not used for calibration.

    Returns (agreement, distinct float top-1 classes, mean float max prob):
    a sanity check that quantisation worked and the output is not degenerate.
    """
    import itertools

    from ai_edge_litert.interpreter import Interpreter

    f = Interpreter(model_path=str(float_path), num_threads=1)
    q = Interpreter(model_path=str(int8_path), num_threads=1)
    f.allocate_tensors()
    q.allocate_tensors()
    fi, fo = f.get_input_details()[0], f.get_output_details()[0]
    qi, qo = q.get_input_details()[0], q.get_output_details()[0]
    (s_in, z_in), (s_out, z_out) = qi["quantization"], qo["quantization"]
    same, tops, maxp = 0, set(), []
    crops = itertools.islice(calibration_images(CALIBRATION_IMAGES + n), CALIBRATION_IMAGES, None)
    for (x,) in crops:
        f.set_tensor(fi["index"], x)
        f.invoke()
        pf = f.get_tensor(fo["index"])[0]
        q.set_tensor(qi["index"], np.clip(np.round(x / s_in + z_in), -128, 127).astype(np.int8))
        q.invoke()
        pq = (q.get_tensor(qo["index"])[0].astype(np.float32) - z_out) * s_out
        same += int(pf.argmax() == pq.argmax())
        tops.add(int(pf.argmax()))
        maxp.append(float(pf.max()))
    return same / n, len(tops), float(np.mean(maxp))


def main(argv=None) -> int:
    ap = make_parser(__doc__.splitlines()[0], REPO / "models" / "bench", "python with tflite_runtime to time there too")
    ap.add_argument("--runs", type=int, default=20, help="timed invokes per model")
    args = ap.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    model = build_model()
    files = {
        "mobilenet_v2_float32.tflite": convert_float(model),
        "mobilenet_v2_int8.tflite": convert_int8(model),
    }
    for name, data in files.items():
        write_file_atomically(out / name, data)
    t_make = time.time() - t0

    runtimes = runtime_pythons(args.device_python)
    failed = False
    for name in files:
        path = out / name
        print(f"{path}  {path.stat().st_size / 1e6:.2f} MB")
        for runtime, py in runtimes:
            r = bench(py, runtime, path, args.runs)
            if "error" in r:
                failed = True
                print(f"  {runtime:15s} ERROR {r['error']}")
            else:
                print(
                    f"  {runtime:15s} 1 thread: median {r['median_ms']:.1f} ms, min {r['min_ms']:.1f} ms"
                    f"  in {r['input']}  out {r['output']}"
                )
    agree, distinct, maxp = top1_agreement(out / "mobilenet_v2_float32.tflite", out / "mobilenet_v2_int8.tflite")
    print(
        f"float vs int8 top-1 agreement {agree:.2f} on 40 unseen photo crops "
        f"({distinct} distinct float top-1 classes, mean max prob {maxp:.2f})"
    )
    print(f"made in {t_make:.1f}s, done in {time.time() - t0:.1f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
