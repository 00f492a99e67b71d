"""Non-maximum suppression: class-aware (OpenCV's cv2.dnn.NMSBoxesBatched) and MediaPipe's weighted variant.

Boxes are [K, 4] as [ymin, xmin, ymax, xmax] in any common unit; IoU does not depend on the unit.
"""

from __future__ import annotations

import cv2
import numpy as np

_KEEP_EVERY_SCORE = -1.0  # scores were thresholded before NMS; OpenCV's own filter must let all through


def class_aware_nms(boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, iou: float, max_detections: int) -> np.ndarray:
    """Indices of the boxes kept, best score first: a box is dropped when a better box of the same
    class overlaps it by more than `iou`; at most `max_detections`.

    Greedy NMS decides each box from better boxes only, so running it on the best M candidates gives
    exactly the first results of running it on all of them: M grows until max_detections are kept
    (or every candidate is in), which keeps a low threshold's thousands of candidates cheap.
    """
    count = len(boxes)
    if count == 0:
        return np.zeros(0, np.intp)
    order = np.argsort(-scores, kind="stable")
    prefix = min(count, max(4 * max_detections, 64))
    while True:
        chosen = order[:prefix]
        kept = chosen[_opencv_nms(boxes[chosen], scores[chosen], class_ids[chosen], iou)]
        if len(kept) >= max_detections or prefix == count:
            return kept[:max_detections]
        prefix = min(count, prefix * 4)


def _opencv_nms(boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, iou: float) -> np.ndarray:
    xywh = np.empty((len(boxes), 4), np.float32)
    xywh[:, 0] = boxes[:, 1]
    xywh[:, 1] = boxes[:, 0]
    xywh[:, 2] = boxes[:, 3] - boxes[:, 1]
    xywh[:, 3] = boxes[:, 2] - boxes[:, 0]
    # no top_k: OpenCV applies it to the candidates before suppression, which would drop boxes that
    # nothing suppresses
    kept = cv2.dnn.NMSBoxesBatched(
        xywh, scores.astype(np.float32, copy=False), class_ids.astype(np.int32, copy=False),
        _KEEP_EVERY_SCORE, float(iou),
    )
    return np.asarray(kept, np.intp).reshape(-1)


def iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one [4] box with [K, 4] boxes (0 where the union is empty)."""
    ymin = np.maximum(box[0], boxes[:, 0])
    xmin = np.maximum(box[1], boxes[:, 1])
    ymax = np.minimum(box[2], boxes[:, 2])
    xmax = np.minimum(box[3], boxes[:, 3])
    intersection = np.clip(ymax - ymin, 0, None) * np.clip(xmax - xmin, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - intersection
    return np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)


def weighted_nms(boxes: np.ndarray, scores: np.ndarray, points: np.ndarray, iou: float,
                 max_detections: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MediaPipe's WEIGHTED algorithm: the best box and every box overlapping it by more than `iou`
    become one detection whose box and points are their score-weighted mean and whose score is the
    best one's. Returns (boxes [M, 4], scores [M], points [M, P, 2]), best first."""
    order = np.argsort(-scores, kind="stable")
    remaining = order
    merged_boxes, merged_scores, merged_points = [], [], []
    while remaining.size and len(merged_scores) < max_detections:
        top = remaining[0]
        overlap = iou_one_to_many(boxes[top], boxes[remaining]) > iou
        overlap[0] = True  # the best box is in its own cluster even when degenerate (zero area)
        cluster = remaining[overlap]
        remaining = remaining[~overlap]
        weights = scores[cluster] / scores[cluster].sum() if scores[cluster].sum() > 0 else None
        merged_boxes.append(np.average(boxes[cluster], axis=0, weights=weights))
        merged_points.append(np.average(points[cluster], axis=0, weights=weights))
        merged_scores.append(scores[top])
    if not merged_scores:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0,) + points.shape[1:], np.float32)
    return np.stack(merged_boxes), np.asarray(merged_scores, np.float32), np.stack(merged_points)
