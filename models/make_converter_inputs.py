"""Make the source models `edge-agent convert` takes besides Keras/SavedModel, trained on real data.

From scikit-learn's handwritten digits (8x8 grey, the same split and pixel mapping as
models/make_demo.py) this writes into ``--out``:

* ``digits_frozen.pb``         a TensorFlow 1 graph written with ``tf.compat.v1`` ops (placeholder
                               ``image`` [None, 8, 8, 1], output ``probs``), trained in a v1 Session and
                               frozen with ``convert_variables_to_constants``: what toco took
* ``digits_nchw.onnx``         the digits CNN in PyTorch's layout (input ``image`` [1, 1, 8, 8] NCHW,
                               output ``probs`` [1, 10]), built with ``onnx.helper`` from trained weights
                               and checked against the Keras original with onnxruntime
* ``digits_dynamic_batch.onnx`` the same network with a symbolic batch, as
                               ``torch.onnx.export(..., dynamic_axes={"image": {0: "batch"}})`` writes it
* ``digits_dynamic.onnx``      the same network with symbolic batch/height/width: refused until
                               ``--input-shapes`` fixes it
* ``digits_lppool.onnx``       a model with ``LpPool``, an operator onnx2tf cannot map (for the error test)
* ``digits.keras``             the Keras CNN the ONNX models were made from (for pruning), and
  ``digits_savedmodel/``       the same exported as a SavedModel
* ``calibration.npy``, ``train.npz`` / ``heldout.npz`` (x uint8 [N, 8, 8, 1], y), ``heldout_video.avi`` (the held-out
  digits as 160x160 MJPG frames, one per digit), ``labels.txt``, ``converter_inputs.json`` (accuracies)

    .venv/bin/python models/make_converter_inputs.py --out DIR

The tests build these once per session through `make_all`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from edge_agent.atomic_file import write_file_atomically

SEED = 0
KERAS_EPOCHS = 15
V1_STEPS = 1500
V1_BATCH = 64
VIDEO_SCALE = 20  # 8x8 -> 160x160, as the demo video
VIDEO_FPS = 20
ONNX_OPSET = 13


def load_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): uint8 images [N, 8, 8, 1] = round(v * 255 / 16), int64 labels."""
    digits = load_digits()
    images = np.round(digits.data * 255.0 / 16.0).astype(np.uint8).reshape(-1, 8, 8, 1)
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=0.25, stratify=digits.target, random_state=SEED)
    return x_train, y_train.astype(np.int64), x_test, y_test.astype(np.int64)


# ---------------------------------------------------------------------------- TF1 frozen graph

def train_frozen_graph(x_train: np.ndarray, y_train: np.ndarray) -> bytes:
    """A conv net written and trained with tf.compat.v1 ops, frozen into a GraphDef (serialized)."""
    import tensorflow as tf

    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(SEED)
        image = v1.placeholder(tf.float32, [None, 8, 8, 1], name="image")
        label = v1.placeholder(tf.int64, [None], name="label")
        init = v1.glorot_uniform_initializer(seed=SEED)
        w1 = v1.get_variable("conv1/kernel", [3, 3, 1, 16], initializer=init)
        b1 = v1.get_variable("conv1/bias", [16], initializer=v1.zeros_initializer())
        w2 = v1.get_variable("conv2/kernel", [3, 3, 16, 32], initializer=init)
        b2 = v1.get_variable("conv2/bias", [32], initializer=v1.zeros_initializer())
        w3 = v1.get_variable("dense/kernel", [4 * 4 * 32, 10], initializer=init)
        b3 = v1.get_variable("dense/bias", [10], initializer=v1.zeros_initializer())
        x = v1.nn.relu(v1.nn.conv2d(image, w1, [1, 1, 1, 1], "SAME") + b1)
        x = v1.nn.max_pool(x, [1, 2, 2, 1], [1, 2, 2, 1], "VALID")
        x = v1.nn.relu(v1.nn.conv2d(x, w2, [1, 1, 1, 1], "SAME") + b2)
        x = v1.reshape(x, [-1, 4 * 4 * 32])
        logits = v1.add(v1.matmul(x, w3), b3, name="logits")
        probs = v1.nn.softmax(logits, name="probs")
        loss = v1.reduce_mean(v1.nn.sparse_softmax_cross_entropy_with_logits(labels=label, logits=logits))
        train = v1.train.AdamOptimizer(3e-3).minimize(loss)
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            rng = np.random.default_rng(SEED)
            x_float = x_train.astype(np.float32) / 255.0
            for _ in range(V1_STEPS):
                batch = rng.choice(len(x_float), V1_BATCH, replace=False)
                session.run(train, {image: x_float[batch], label: y_train[batch]})
            frozen = v1.graph_util.convert_variables_to_constants(session, graph.as_graph_def(), [probs.op.name])
    return frozen.SerializeToString()


def frozen_graph_accuracy(graph_bytes: bytes, x: np.ndarray, y: np.ndarray) -> float:
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef.FromString(graph_bytes)
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as session:
        probs = session.run("probs:0", {"image:0": x.astype(np.float32) / 255.0})
    return float(np.mean(probs.argmax(axis=1) == y))


# ---------------------------------------------------------------------------- Keras CNN and its ONNX twin

def train_keras(x_train: np.ndarray, y_train: np.ndarray):
    """The digits CNN of tests/test_convert.py (Conv16-Pool-Conv32-Dense10), seeded."""
    import keras

    keras.utils.set_random_seed(SEED)
    model = keras.Sequential([
        keras.Input((8, 8, 1), name="image"),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(x_train.astype(np.float32) / 255.0, y_train, epochs=KERAS_EPOCHS, batch_size=32, verbose=0)
    return model


def onnx_from_keras(model, dims: tuple = (1, 1, 8, 8), pool: str = "MaxPool") -> bytes:
    """The Keras CNN as an NCHW ONNX graph (what torch.onnx.export writes for the same layers).

    Conv kernels go from HWIO to OIHW; the Dense rows are permuted from Keras' (h, w, c)
    flattening order to the (c, h, w) order of flattening an NCHW tensor.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    conv1, conv2, dense = (layer for layer in model.layers if layer.get_weights())
    k1, c1 = conv1.get_weights()
    k2, c2 = conv2.get_weights()
    w3, b3 = dense.get_weights()
    w3_chw = w3.reshape(4, 4, 32, 10).transpose(2, 0, 1, 3).reshape(4 * 4 * 32, 10)
    initializers = [
        numpy_helper.from_array(k1.transpose(3, 2, 0, 1).copy(), "conv1.weight"),
        numpy_helper.from_array(c1, "conv1.bias"),
        numpy_helper.from_array(k2.transpose(3, 2, 0, 1).copy(), "conv2.weight"),
        numpy_helper.from_array(c2, "conv2.bias"),
        numpy_helper.from_array(w3_chw.T.copy(), "fc.weight"),  # Gemm with transB=1, as torch.nn.Linear
        numpy_helper.from_array(b3, "fc.bias"),
    ]
    pool_node = (helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]) if pool == "MaxPool"
                 else helper.make_node("LpPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2], p=2))
    nodes = [
        helper.make_node("Conv", ["image", "conv1.weight", "conv1.bias"], ["c1"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        pool_node,
        helper.make_node("Conv", ["p1", "conv2.weight", "conv2.bias"], ["c2"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Flatten", ["r2"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "digits",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, list(dims))],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [dims[0], 10])],
        initializers,
    )
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
                                   producer_name="edge-agent models/make_converter_inputs.py")
    onnx_model.ir_version = 8  # onnxruntime 1.18 reads IR <= 9
    onnx.checker.check_model(onnx_model)
    return onnx_model.SerializeToString()


def onnxruntime_probs(onnx_bytes: bytes, x_nhwc_u8: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    nchw = (x_nhwc_u8.astype(np.float32) / 255.0).transpose(0, 3, 1, 2)
    return np.concatenate([session.run(["probs"], {"image": sample[None]})[0] for sample in nchw])


# ---------------------------------------------------------------------------- data files

def write_video(path: Path, frames_u8: np.ndarray) -> None:
    """8x8 grey digits as a 160x160 BGR MJPG .avi, one frame per digit (as models/make_demo.py)."""
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")  # VideoWriter picks the container from the suffix
    size = 8 * VIDEO_SCALE
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"MJPG"), VIDEO_FPS, (size, size), True)
    if not writer.isOpened():
        raise RuntimeError("cv2.VideoWriter could not open an MJPG writer")
    for image in frames_u8:
        big = cv2.resize(image[:, :, 0], (size, size), interpolation=cv2.INTER_NEAREST)
        writer.write(cv2.cvtColor(big, cv2.COLOR_GRAY2BGR))
    writer.release()
    os.replace(tmp, path)


def make_all(out: Path) -> dict:
    """Write every file listed in the module docstring into `out`; returns the measured accuracies."""
    out.mkdir(parents=True, exist_ok=True)
    x_train, y_train, x_test, y_test = load_data()
    np.save(out / "calibration.npy", x_train[:200])
    np.savez(out / "heldout.npz", x=x_test, y=y_test)
    np.savez(out / "train.npz", x=x_train, y=y_train)
    write_file_atomically(out / "labels.txt", "".join(f"{d}\n" for d in range(10)).encode())
    write_video(out / "heldout_video.avi", x_test)

    frozen = train_frozen_graph(x_train, y_train)
    write_file_atomically(out / "digits_frozen.pb", frozen)

    model = train_keras(x_train, y_train)
    model.save(out / "digits.keras")
    model.export(str(out / "digits_savedmodel"), verbose=False)
    keras_probs = model.predict(x_test.astype(np.float32) / 255.0, verbose=0)
    onnx_bytes = onnx_from_keras(model)
    onnx_probs = onnxruntime_probs(onnx_bytes, x_test)
    max_diff = float(np.abs(onnx_probs - keras_probs).max())
    assert max_diff < 1e-4, f"the ONNX twin differs from the Keras model by {max_diff}"
    write_file_atomically(out / "digits_nchw.onnx", onnx_bytes)
    write_file_atomically(out / "digits_dynamic_batch.onnx", onnx_from_keras(model, ("batch", 1, 8, 8)))
    write_file_atomically(out / "digits_dynamic.onnx", onnx_from_keras(model, ("batch", 1, "height", "width")))
    write_file_atomically(out / "digits_lppool.onnx", onnx_from_keras(model, pool="LpPool"))

    summary = {
        "frozen_graph_accuracy": round(frozen_graph_accuracy(frozen, x_test, y_test), 4),
        "keras_accuracy": round(float(np.mean(keras_probs.argmax(axis=1) == y_test)), 4),
        "onnx_accuracy": round(float(np.mean(onnx_probs.argmax(axis=1) == y_test)), 4),
        "onnx_vs_keras_max_abs_diff": max_diff,
        "heldout_samples": int(len(y_test)),
        "made_by": "models/make_converter_inputs.py",
    }
    write_file_atomically(out / "converter_inputs.json", (json.dumps(summary, indent=2) + "\n").encode())
    return summary


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("models/converter_inputs"), help="output folder")
    args = parser.parse_args(argv)
    print(json.dumps(make_all(args.out), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
