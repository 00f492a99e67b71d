"""YOLO heads as Ultralytics (and the YOLOv5 repository) export them, decoded with numpy and OpenCV's NMS.

Layouts (one output, batch 1):
  v8 / v11   [1, 4+nc, N] or [1, N, 4+nc]: cx, cy, w, h, then nc class scores (already sigmoid)
  v5         [1, N, 5+nc] (or [1, 5+nc, N]): cx, cy, w, h, objectness, nc class scores; score = obj x class
  end2end    [1, K, 6]: x1, y1, x2, y2, score, class (NMS inside the model; unused rows are zeros)
Boxes are normalised to the model input (TFLite exports) or in input pixels, as the layout says.

Per frame the work stays proportional to the candidates: the best class score of every box is
compared with the threshold in the output's own dtype (int8 stays int8), and only the boxes that
pass are dequantised, converted and suppressed. `keep` returns the boxes kept with the head rows they
came from (KeptBoxes), which is how yolo_seg.py reads the mask coefficients of those boxes only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from edge_agent.decode.common import Quantization, as_box, boxes_to_frame, label_for, quantized_threshold
from edge_agent.decode.nms import class_aware_nms
from edge_agent.records import Decoded, Detection

MAX_NMS_CANDIDATES = 3000  # the best-scoring boxes handed to NMS when a low threshold lets more through
_NO_DETECTIONS = Decoded()


@dataclass(frozen=True)
class YoloLayout:
    """Where the values sit in a YOLO output, decided once from the model."""

    kind: str  # "v8" | "v5" | "end2end"
    channels_first: bool  # [1, C, N] rather than [1, N, C]
    classes: int  # nc (0 for end2end: class ids are values, not columns)
    boxes: int  # N (or K for end2end)
    pixel_boxes: bool  # coordinates in input pixels rather than 0..1

    @property
    def score_offset(self) -> int:
        return 5 if self.kind == "v5" else 4


@dataclass(frozen=True)
class KeptBoxes:
    """What a YOLO head keeps of one frame after thresholds and NMS, best first, still in model terms.

    `rows` says where each kept box sits in the head, so a head with more values per box than
    these (instance segmentation's mask coefficients) reads them for the kept boxes only.
    """

    rows: np.ndarray  # [K] indices into the head's rows
    boxes: np.ndarray  # [K, 4] ymin, xmin, ymax, xmax normalised to the model input
    scores: np.ndarray  # [K]
    class_ids: np.ndarray  # [K]


class YoloDecoder:
    """Decodes one YOLO output into detections in frame coordinates."""

    def __init__(self, layout: YoloLayout, quant: Quantization, dtype: np.dtype, input_size: tuple[int, int],
                 labels: Sequence[str] | None, class_thresholds: np.ndarray, default_threshold: float,
                 iou: float, max_detections: int):
        self.layout = layout
        self.quant = quant
        self.labels = labels
        self.iou = iou
        self.max_detections = max_detections
        self._thresholds = np.asarray(class_thresholds, np.float32)  # per class id (v8/v5); may be empty
        self._default_threshold = np.float32(default_threshold)
        lowest = float(self._thresholds.min()) if self._thresholds.size else default_threshold
        self._stored_threshold = quantized_threshold(lowest, quant, dtype)
        height, width = input_size
        unit = np.array([height, width, height, width], np.float32) if layout.pixel_boxes else np.ones(4, np.float32)
        self._per_unit = (1.0 / unit).astype(np.float32)
        self._scale = np.float32(quant.scale) if quant.scale and np.dtype(dtype).kind in "iu" else None
        self._zero_point = np.float32(quant.zero_point)

    def __call__(self, outputs: Sequence[np.ndarray], box_transform: tuple[float, float, float, float]) -> Decoded:
        kept = self.keep(self.rows(outputs[0]))
        if kept is None:
            return _NO_DETECTIONS
        return Decoded(detections=self.detections(kept, box_transform))

    def rows(self, head: np.ndarray) -> np.ndarray:
        """The head [1, C, N] or [1, N, C] as [N, C] rows (a view, nothing copied)."""
        return head[0].T if self.layout.channels_first else head[0]

    def keep(self, rows: np.ndarray) -> KeptBoxes | None:
        """The boxes that pass the thresholds and NMS (None: none do)."""
        found = self._end2end(rows) if self.layout.kind == "end2end" else self._dense(rows)
        if found is None:
            return None
        candidates, boxes, scores, class_ids, suppress = found
        finite = np.isfinite(boxes).all(axis=1) & np.isfinite(scores)
        if not finite.all():  # a NaN from a broken model must not become "NaN" in a JSON payload
            candidates, boxes, scores, class_ids = candidates[finite], boxes[finite], scores[finite], class_ids[finite]
        if suppress:
            keep = class_aware_nms(boxes, scores, class_ids, self.iou, self.max_detections)
        else:
            keep = np.argsort(-scores, kind="stable")[: self.max_detections]
        if keep.size == 0:
            return None
        return KeptBoxes(candidates[keep], boxes[keep], scores[keep], class_ids[keep])

    def detections(self, kept: KeptBoxes, box_transform: tuple[float, float, float, float],
                   coverages: Sequence[float] | None = None) -> tuple[Detection, ...]:
        """The kept boxes as Detections in frame coordinates (with each mask's coverage when given)."""
        frame_boxes = boxes_to_frame(kept.boxes, box_transform)
        shares = coverages if coverages is not None else [None] * len(frame_boxes)
        return tuple(
            Detection(int(class_id), label_for(self.labels, int(class_id)), float(score), as_box(box), coverage=share)
            for class_id, score, box, share in zip(kept.class_ids, kept.scores, frame_boxes, shares)
        )

    def _real(self, stored: np.ndarray) -> np.ndarray:
        if self._scale is None:
            return stored.astype(np.float32, copy=False)
        return (stored.astype(np.float32) - self._zero_point) * self._scale

    def _dense(self, rows: np.ndarray):
        first = self.layout.score_offset
        class_scores = rows[:, first:first + self.layout.classes]
        if self.layout.kind == "v5":
            gate = rows[:, 4]  # score = objectness x class score <= objectness
        else:
            gate = class_scores.max(axis=1)
        candidates = np.flatnonzero(gate >= self._stored_threshold)
        if candidates.size == 0:
            return None
        if candidates.size > MAX_NMS_CANDIDATES:
            candidates = candidates[np.argpartition(gate[candidates], -MAX_NMS_CANDIDATES)[-MAX_NMS_CANDIDATES:]]
        chosen = self._real(class_scores[candidates])
        class_ids = chosen.argmax(axis=1)
        scores = chosen[np.arange(len(candidates)), class_ids]
        if self.layout.kind == "v5":
            scores = scores * self._real(gate[candidates])
        passed = scores >= self._thresholds[class_ids]
        if not passed.any():
            return None
        candidates, class_ids, scores = candidates[passed], class_ids[passed], scores[passed]
        xywh = self._real(rows[candidates, :4])
        boxes = np.empty_like(xywh)
        boxes[:, 0] = xywh[:, 1] - xywh[:, 3] / 2  # ymin = cy - h/2
        boxes[:, 1] = xywh[:, 0] - xywh[:, 2] / 2
        boxes[:, 2] = xywh[:, 1] + xywh[:, 3] / 2
        boxes[:, 3] = xywh[:, 0] + xywh[:, 2] / 2
        boxes *= self._per_unit
        return candidates, boxes, scores, class_ids, True

    def _end2end(self, rows: np.ndarray):
        scores_stored = rows[:, 4]
        candidates = np.flatnonzero(scores_stored >= self._stored_threshold)
        if candidates.size == 0:
            return None
        values = self._real(rows[candidates, :6])
        scores = values[:, 4]
        # class ids are values here: anything not a small whole number (NaN, -3, 1e9) is no class
        class_ids = np.nan_to_num(values[:, 5], nan=-1.0, posinf=-1.0, neginf=-1.0)
        class_ids = np.where((class_ids >= 0) & (class_ids < 1 << 20), np.rint(class_ids), -1).astype(np.int64)
        valid = class_ids >= 0
        limits = np.full(len(class_ids), self._default_threshold, np.float32)
        listed = valid & (class_ids < self._thresholds.size)
        limits[listed] = self._thresholds[class_ids[listed]]
        passed = valid & (scores >= limits)
        if not passed.any():
            return None
        candidates, values, scores, class_ids = candidates[passed], values[passed], scores[passed], class_ids[passed]
        boxes = values[:, [1, 0, 3, 2]] * self._per_unit  # x1, y1, x2, y2 -> ymin, xmin, ymax, xmax
        return candidates, boxes, scores, class_ids, False
