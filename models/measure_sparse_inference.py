"""Does XNNPACK run a pruned float model faster here? Prints size, gzipped size, weight sparsity and latency.

A MobileNet-like float model (96x96x3 input, a stride-2 3x3 convolution, then five depthwise
+ 1x1 blocks up to 256 channels; random weights, seed 0) is converted twice: dense, and with
75 % of each 1x1 kernel's smallest weights set to zero (the layers XNNPACK's sparse inference
targets). Each is timed with TFLite's reference kernels, XNNPACK, and XNNPACK with its
flag-protected features (`edge_agent.host.weights.kernel_latency`, one thread).

    .venv/bin/python models/measure_sparse_inference.py
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from edge_agent.host.weights import compressed_size, kernel_latency, weight_sparsity

SEED = 0
SPARSITY = 0.75
INPUT = (96, 96, 3)


def build():
    import keras

    keras.utils.set_random_seed(SEED)
    layers = keras.layers
    image = keras.Input(INPUT)
    x = layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(image)
    for channels in (64, 128, 128, 256, 256):
        x = layers.DepthwiseConv2D(3, padding="same", activation="relu")(x)
        x = layers.Conv2D(channels, 1, activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(image, layers.Dense(10)(x))


def convert(model) -> bytes:
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1, *INPUT], tf.float32)])
    def serve(image):
        return model(image)

    return bytes(tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()]).convert())


def zero_pointwise_kernels(model, sparsity: float) -> None:
    for layer in model.layers:
        if type(layer).__name__ == "Conv2D" and tuple(layer.kernel_size) == (1, 1):
            kernel, bias = layer.get_weights()
            kernel[np.abs(kernel) < np.quantile(np.abs(kernel), sparsity)] = 0.0
            layer.set_weights([kernel, bias])


def main() -> int:
    model = build()
    dense = convert(model)
    zero_pointwise_kernels(model, SPARSITY)
    sparse = convert(model)
    sample = np.random.default_rng(SEED).random((1, *INPUT)).astype(np.float32)
    for name, content in (("dense", dense), ("pruned", sparse)):
        print(json.dumps({"model": name, "size_bytes": len(content), "size_compressed_bytes": compressed_size(content),
                          "sparsity": weight_sparsity(content).sparsity,
                          "latency": kernel_latency(content, sample, threads=1, runs=30).to_dict()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
