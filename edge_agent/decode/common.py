"""What every decoder shares: the error type, quantisation, labels and mapping boxes to the frame."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from edge_agent.errors import InputError

IDENTITY_TRANSFORM = (1.0, 0.0, 1.0, 0.0)  # (ay, by, ax, bx): frame = model * a + b


class DecodeError(InputError, ValueError):
    """The model's outputs do not fit the configured task (or its decoding options)."""


@dataclass(frozen=True)
class Quantization:
    scale: float = 0.0
    zero_point: int = 0


def dequantize(array: np.ndarray, quant: Quantization) -> np.ndarray:
    """Real values of a (possibly) quantised tensor, as float32."""
    if quant.scale and array.dtype.kind in "iu":
        return (array.astype(np.float32) - quant.zero_point) * np.float32(quant.scale)
    return array.astype(np.float32, copy=False)


def quantized_threshold(threshold: float, quant: Quantization, dtype: np.dtype) -> float:
    """The smallest stored value whose real value is >= `threshold`, so a quantised output can be
    filtered before anything is dequantised (the same survivors as dequantising first)."""
    if not (quant.scale and np.dtype(dtype).kind in "iu"):
        return threshold
    info = np.iinfo(dtype)
    # slack below the exact quotient: a superset is safe (survivors are checked again as floats)
    stored = math.ceil(threshold / quant.scale + quant.zero_point - 1e-3)
    return float(min(max(stored, info.min), info.max + 1))


def label_for(labels: Sequence[str] | None, class_id: int) -> str:
    if labels and 0 <= class_id < len(labels):
        return labels[class_id]
    return str(class_id)


def boxes_to_frame(boxes: np.ndarray, box_transform: tuple[float, float, float, float]) -> np.ndarray:
    """[K, 4] boxes [ymin, xmin, ymax, xmax] normalised to the model input -> the frame, clipped to [0, 1]."""
    ay, by, ax, bx = box_transform
    scale = np.array([ay, ax, ay, ax], np.float32)
    offset = np.array([by, bx, by, bx], np.float32)
    return np.clip(boxes * scale + offset, 0.0, 1.0)


def points_to_frame(xs: np.ndarray, ys: np.ndarray, box_transform: tuple[float, float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Point coordinates normalised to the model input -> the frame (not clipped: a keypoint may lie
    just outside it, and its position still says where the body part is)."""
    ay, by, ax, bx = box_transform
    return xs * ax + bx, ys * ay + by


def as_box(row: np.ndarray) -> tuple[float, float, float, float]:
    return (float(row[0]), float(row[1]), float(row[2]), float(row[3]))
