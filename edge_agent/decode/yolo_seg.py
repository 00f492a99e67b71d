"""YOLO instance segmentation (Ultralytics `-seg` exports): yolo.py's boxes, and a mask for each box kept.

Two outputs: the head, whose rows are a YOLOv8/YOLO11 box row (cx, cy, w, h, nc class scores; or an
end-to-end row x1, y1, x2, y2, score, class) followed by nm mask coefficients, and the mask
prototypes, nm maps at 1/stride of the input (stride 4 in Ultralytics' models): [1, H/4, W/4, nm]
in TFLite exports through onnx2tf (NHWC input), [1, nm, H/4, W/4] in LiteRT exports (NCHW input).

The boxes are yolo.py's YoloDecoder's: thresholds, per-label minimum scores and NMS are the ones
yolo-v8 (or yolo-end2end) runs. Then, for the kept boxes only, each mask is Ultralytics'
`process_mask_upsample`: sigmoid(coefficients @ prototypes), upsampled bilinearly to the input size,
cropped to the box, > 0.5. Only the prototype pixels under a box (and the ones its edge
interpolates from) are multiplied, so the work follows the boxes' area, not the map's.

The masks become one class map over the model input (`SegmentationMask`, as semantic segmentation
makes, the best-scoring instance on top where masks overlap) that the views draw as a translucent
overlay; each detection carries `coverage`, the fraction of the frame its mask covers. The padding
of a letterbox is not part of any mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from edge_agent.decode.common import Quantization, dequantize
from edge_agent.decode.segmentation import NO_CLASS, frame_region
from edge_agent.decode.yolo import YoloDecoder
from edge_agent.records import Decoded, SegmentationMask

MASK_THRESHOLD = 0.5  # Ultralytics': a pixel belongs to the instance when sigmoid(logit) > 0.5
_NO_DETECTIONS = Decoded()


@dataclass(frozen=True)
class YoloSegLayout:
    """Where the mask parts of a YOLO-seg model sit, decided once from the model."""

    head_index: int  # which output is the head (Ultralytics' TFLite files list the prototypes first or second)
    protos_index: int
    protos_channels_first: bool  # [1, nm, h, w] rather than [1, h, w, nm]
    mask_height: int  # the prototypes' h and w
    mask_width: int
    coefficients: int  # nm: mask coefficients per box = prototype channels
    coefficients_offset: int  # where they start in a head row: 4 + nc (6 for an end-to-end row)
    stride: int  # input pixels per prototype pixel


class YoloSegDecoder:
    """Detections from `boxes` (the head's YoloDecoder) and their masks as one class map over the input."""

    def __init__(self, boxes: YoloDecoder, layout: YoloSegLayout, head_quant: Quantization, protos_quant: Quantization,
                 input_size: tuple[int, int], class_names: Sequence[str]):
        self.boxes, self.layout = boxes, layout
        self.head_quant, self.protos_quant = head_quant, protos_quant
        self.height, self.width = input_size
        self.class_names = tuple(class_names)
        self._regions: dict[tuple[float, float, float, float], tuple[slice, slice]] = {}

    def __call__(self, outputs: Sequence[np.ndarray], box_transform: tuple[float, float, float, float]) -> Decoded:
        layout = self.layout
        rows = self.boxes.rows(outputs[layout.head_index])
        kept = self.boxes.keep(rows)
        if kept is None:
            return _NO_DETECTIONS
        first = layout.coefficients_offset
        coefficients = dequantize(rows[kept.rows, first:first + layout.coefficients], self.head_quant)
        protos = outputs[layout.protos_index][0]
        visible = self._frame_region(box_transform)
        ay, _, ax, _ = box_transform
        pixel_area = ay * ax / (self.height * self.width)  # of the frame, per input pixel
        class_map = np.full((self.height, self.width), NO_CLASS, np.int16)
        coverages = [0.0] * len(kept.rows)
        for i in reversed(range(len(kept.rows))):  # the best last: on top where masks overlap
            found = self._mask(protos, coefficients[i], kept.boxes[i], visible)
            if found is None:
                continue
            rows_in, cols_in, mask = found
            coverages[i] = min(1.0, float(np.count_nonzero(mask)) * pixel_area)
            class_map[rows_in, cols_in][mask] = kept.class_ids[i]
        detections = self.boxes.detections(kept, box_transform, coverages)
        return Decoded(detections=detections, mask=SegmentationMask(class_map, self.class_names, box_transform))

    def _frame_region(self, box_transform) -> tuple[slice, slice]:
        region = self._regions.get(box_transform)
        if region is None:
            region = self._regions[box_transform] = frame_region(self.height, self.width, box_transform)
        return region

    def _mask(self, protos: np.ndarray, coefficients: np.ndarray, box: np.ndarray,
              visible: tuple[slice, slice]) -> tuple[slice, slice, np.ndarray] | None:
        """The instance's pixels inside its box and the frame: (input rows, input columns, bool mask)."""
        stride = self.layout.stride
        # Ultralytics' crop_mask keeps the pixels whose index is >= the box's first edge and < its second
        y0, y1 = _crop(box[0], box[2], self.height, visible[0])
        x0, x1 = _crop(box[1], box[3], self.width, visible[1])
        if y1 <= y0 or x1 <= x0:
            return None
        p0, p1 = _source_span(y0, y1, stride, self.layout.mask_height)
        q0, q1 = _source_span(x0, x1, stride, self.layout.mask_width)
        with np.errstate(invalid="ignore", over="ignore"):  # a broken model's inf and NaN: no mask there, no warning
            if self.layout.protos_channels_first:
                region = dequantize(protos[:, p0:p1, q0:q1], self.protos_quant).reshape(len(coefficients), -1)
                logits = coefficients @ region
            else:
                region = dequantize(protos[p0:p1, q0:q1, :], self.protos_quant).reshape(-1, len(coefficients))
                logits = region @ coefficients
            probability = (0.5 + 0.5 * np.tanh(0.5 * logits)).reshape(p1 - p0, q1 - q0)  # sigmoid, without overflow
        # OpenCV's INTER_LINEAR samples at (j + 0.5) / stride - 0.5, as PyTorch's bilinear (align_corners=False)
        upsampled = cv2.resize(probability, ((q1 - q0) * stride, (p1 - p0) * stride), interpolation=cv2.INTER_LINEAR)
        top, left = y0 - p0 * stride, x0 - q0 * stride
        mask = upsampled[top:top + (y1 - y0), left:left + (x1 - x0)] > MASK_THRESHOLD
        return slice(y0, y1), slice(x0, x1), mask


def _crop(first: float, second: float, size: int, visible: slice) -> tuple[int, int]:
    """Input pixel indices [start, stop) of a box side (normalised edges), within the visible span."""
    start = max(visible.start, math.ceil(min(max(first, 0.0), 1.0) * size))
    stop = min(visible.stop, math.ceil(min(max(second, 0.0), 1.0) * size))
    return start, stop


def _source_span(start: int, stop: int, stride: int, size: int) -> tuple[int, int]:
    """The prototype pixels bilinear upsampling reads for input pixels [start, stop)."""
    first = math.floor((start + 0.5) / stride - 0.5)
    last = math.floor((stop - 0.5) / stride - 0.5) + 1
    return max(0, first), min(size, last + 1)
