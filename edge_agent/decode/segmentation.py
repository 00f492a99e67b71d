"""Segmentation: per-pixel outputs to a small per-frame summary, the mask kept for sinks.

Layouts: [1, H, W, C] (or [1, C, H, W]) class scores or logits -> argmax (quantised values need no
dequantising: every channel shares the scale); [1, H, W] class ids; [1, H, W, 1] one foreground
probability (MediaPipe's selfie segmentation) -> the pixels at or above the threshold.

Each class present in the part of the map that shows the frame (letterbox padding and crops are
left out) becomes a Segment: the fraction of the frame it covers and its bounding box in frame
coordinates. Background classes (a label such as "background") are not reported.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from edge_agent.decode.common import Quantization, boxes_to_frame, label_for, quantized_threshold
from edge_agent.records import Decoded, Segment, SegmentationMask

NO_CLASS = -1
BACKGROUND_LABELS = ("background", "__background__", "???", "bg", "none")


class SegmentationDecoder:
    """kind "scores" | "ids" | "foreground"; `channels_first` for [1, C, H, W] scores."""

    def __init__(self, kind: str, height: int, width: int, classes: int, channels_first: bool, quant: Quantization,
                 dtype: np.dtype, labels: Sequence[str] | None, threshold: float, max_segments: int):
        self.kind, self.height, self.width, self.classes = kind, height, width, classes
        self.channels_first, self.labels, self.max_segments = channels_first, labels, max_segments
        self._stored_threshold = quantized_threshold(threshold, quant, dtype)
        names = [label_for(labels, c) for c in range(classes)]
        self._reported = np.array([name.strip().lower() not in BACKGROUND_LABELS for name in names], bool)
        self._names = tuple(names)
        self._regions: dict[tuple[float, float, float, float], tuple[slice, slice]] = {}

    def _class_map(self, output: np.ndarray) -> np.ndarray:
        if self.kind == "scores":
            scores = output[0]
            return (scores.argmax(axis=0) if self.channels_first else scores.argmax(axis=-1)).astype(np.int16)
        if self.kind == "ids":
            ids = output.reshape(self.height, self.width)
            return np.where((ids >= 0) & (ids < self.classes), ids, NO_CLASS).astype(np.int16)
        foreground = output.reshape(self.height, self.width) >= self._stored_threshold
        return np.where(foreground, 0, NO_CLASS).astype(np.int16)

    def _frame_region(self, box_transform) -> tuple[slice, slice]:
        """frame_region, cached per geometry."""
        region = self._regions.get(box_transform)
        if region is None:
            region = self._regions[box_transform] = frame_region(self.height, self.width, box_transform)
        return region

    def __call__(self, outputs: Sequence[np.ndarray], box_transform) -> Decoded:
        class_map = self._class_map(outputs[0])
        rows, cols = self._frame_region(box_transform)
        visible = class_map[rows, cols]
        counts = np.bincount(visible[visible >= 0].ravel(), minlength=self.classes)[: self.classes]
        ay, _, ax, _ = box_transform
        pixel_area = ay * ax / (self.height * self.width)  # of the frame, per map pixel
        present = [c for c in np.flatnonzero(counts) if self._reported[c]]
        present.sort(key=lambda c: -counts[c])
        segments = []
        if present:
            boxes = []
            for class_id in present[: self.max_segments]:
                where = visible == class_id
                ys = np.flatnonzero(where.any(axis=1))
                xs = np.flatnonzero(where.any(axis=0))
                boxes.append([(rows.start + ys[0]) / self.height, (cols.start + xs[0]) / self.width,
                              (rows.start + ys[-1] + 1) / self.height, (cols.start + xs[-1] + 1) / self.width])
            frame_boxes = boxes_to_frame(np.asarray(boxes, np.float32), box_transform)
            for class_id, box in zip(present, frame_boxes):
                coverage = min(1.0, float(counts[class_id]) * pixel_area)
                segments.append(Segment(int(class_id), self._names[class_id], coverage, tuple(float(v) for v in box)))
        mask = SegmentationMask(class_map, self._names, box_transform)
        return Decoded(segments=tuple(segments), mask=mask)


def frame_region(height: int, width: int, box_transform: tuple[float, float, float, float]) -> tuple[slice, slice]:
    """The rows and columns of a [height, width] map over the model input whose pixel centres fall
    inside the frame (letterbox padding and what a crop cut off are outside)."""
    ay, by, ax, bx = box_transform

    def span(count: int, a: float, b: float) -> slice:
        centres = (np.arange(count) + 0.5) / count * a + b
        inside = np.flatnonzero((centres >= 0) & (centres <= 1))
        return slice(int(inside[0]), int(inside[-1]) + 1) if inside.size else slice(0, 0)

    return span(height, ay, by), span(width, ax, bx)


def map_fits_input(height: int, width: int, input_height: int, input_width: int) -> bool:
    """A per-pixel map has the input's aspect ratio (within 10%) and is at least 8x8."""
    if min(height, width) < 8 or not input_height or not input_width:
        return False
    return math.isclose(height / width, input_height / input_width, rel_tol=0.1)
