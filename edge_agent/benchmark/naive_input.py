"""The input preparation most hand-written loops do, as the reference the agent is measured against:
cv2.resize with its default interpolation, cvtColor, then numpy normalisation and quantisation
that allocate new arrays every frame. (OpenCV is used here, outside sources/, on purpose: this
is a copy of what users write, not part of the agent.)"""

from __future__ import annotations

import cv2
import numpy as np

from edge_agent.config import PreprocessOptions
from edge_agent.runtime import TensorSpec


def naive_input(image: np.ndarray, spec: TensorSpec, options: PreprocessOptions) -> np.ndarray:
    """`image` (BGR uint8) as the model's input array, the plain way."""
    channel_first = len(spec.shape) == 4 and spec.shape[1] in (1, 3) and spec.shape[3] not in (1, 3)
    height, width = (spec.shape[2], spec.shape[3]) if channel_first else (spec.shape[1], spec.shape[2])
    channels = spec.shape[1] if channel_first else spec.shape[3] if len(spec.shape) == 4 else 1
    resized = cv2.resize(image, (width, height))
    if channels == 1:
        pixels = cv2.cvtColor(resized, cv2.COLOR_BGR2GRAY)[..., None]
    elif options.color == "rgb":
        pixels = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)
    else:
        pixels = resized
    real = (pixels.astype(np.float32) - np.float32(options.mean[0])) / np.float32(options.std[0])
    if spec.dtype == np.float32:
        values = real
    else:
        info = np.iinfo(spec.dtype)
        values = np.clip(np.round(real / spec.scale + spec.zero_point), info.min, info.max).astype(spec.dtype)
    if channel_first:  # what a hand-written loop does for an NCHW model: transpose (another copy)
        values = np.ascontiguousarray(values.transpose(2, 0, 1))
    return values.reshape(spec.shape)
