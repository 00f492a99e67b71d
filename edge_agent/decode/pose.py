"""Pose: MoveNet single-pose [1, 1, 17, 3], MoveNet multi-pose [1, 6, 56], YOLOv8/v11-pose [1, 4+nc+3k, N].

Keypoints come back named (COCO's 17 names, or the names in the model's metadata), normalised to
the frame; `box` is the person's box (for single-pose models the box around its confident keypoints).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from edge_agent.decode.common import Quantization, as_box, boxes_to_frame, dequantize, label_for, points_to_frame, quantized_threshold
from edge_agent.decode.nms import class_aware_nms
from edge_agent.records import Decoded, Keypoint, Pose

COCO_KEYPOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
MOVENET_MULTI_VALUES = 17 * 3 + 5  # 17 x (y, x, score), then ymin, xmin, ymax, xmax, score
_NO_POSES = Decoded()


def _keypoints(names: Sequence[str], xs: np.ndarray, ys: np.ndarray, scores: np.ndarray | None) -> tuple[Keypoint, ...]:
    return tuple(
        Keypoint(name, float(x), float(y), None if scores is None else float(s))
        for name, x, y, s in zip(names, xs, ys, scores if scores is not None else [None] * len(names))
    )


def _finite(*arrays: np.ndarray) -> bool:
    return all(bool(np.isfinite(a).all()) for a in arrays)


class MoveNetSingleDecoder:
    """[1, 1, K, 3] = (y, x, score) per keypoint; the pose's score is the mean keypoint score."""

    def __init__(self, quant: Quantization, names: Sequence[str], labels: Sequence[str] | None, threshold: float):
        self.quant, self.names, self.threshold = quant, tuple(names), threshold
        self.label = label_for(labels, 0) if labels else "person"

    def __call__(self, outputs: Sequence[np.ndarray], box_transform) -> Decoded:
        values = dequantize(outputs[0], self.quant).reshape(-1, 3)
        ys, xs, scores = values[:, 0], values[:, 1], values[:, 2]
        score = float(scores.mean())
        if not (score >= self.threshold and _finite(values)):
            return _NO_POSES
        confident = scores >= self.threshold
        if not confident.any():
            confident = np.ones_like(scores, bool)
        box = np.array([[ys[confident].min(), xs[confident].min(), ys[confident].max(), xs[confident].max()]], np.float32)
        frame_xs, frame_ys = points_to_frame(xs, ys, box_transform)
        pose = Pose(0, self.label, score, as_box(boxes_to_frame(box, box_transform)[0]),
                    _keypoints(self.names, frame_xs, frame_ys, scores))
        return Decoded(poses=(pose,))


class MoveNetMultiDecoder:
    """[1, P, 56]: each row 17 x (y, x, score), then the person's ymin, xmin, ymax, xmax and score."""

    def __init__(self, quant: Quantization, labels: Sequence[str] | None, threshold: float, max_detections: int):
        self.quant, self.threshold, self.max_detections = quant, threshold, max_detections
        self.label = label_for(labels, 0) if labels else "person"

    def __call__(self, outputs: Sequence[np.ndarray], box_transform) -> Decoded:
        rows = dequantize(outputs[0], self.quant).reshape(-1, MOVENET_MULTI_VALUES)
        people = rows[(rows[:, 55] >= self.threshold) & np.isfinite(rows).all(axis=1)]
        if not len(people):
            return _NO_POSES
        people = people[np.argsort(-people[:, 55], kind="stable")][: self.max_detections]
        boxes = boxes_to_frame(people[:, 51:55], box_transform)
        poses = []
        for person, box in zip(people, boxes):
            points = person[:51].reshape(17, 3)
            xs, ys = points_to_frame(points[:, 1], points[:, 0], box_transform)
            poses.append(Pose(0, self.label, float(person[55]), as_box(box), _keypoints(COCO_KEYPOINTS, xs, ys, points[:, 2])))
        return Decoded(poses=tuple(poses))


@dataclass(frozen=True)
class YoloPoseLayout:
    channels_first: bool
    classes: int
    keypoints: int
    values_per_keypoint: int  # 3: x, y, visibility; 2: x, y
    pixel_boxes: bool


class YoloPoseDecoder:
    """[1, 4 + nc + k*v, N]: cx, cy, w, h, nc class scores, then k keypoints of (x, y[, visibility])."""

    def __init__(self, layout: YoloPoseLayout, quant: Quantization, dtype: np.dtype, input_size: tuple[int, int],
                 names: Sequence[str], labels: Sequence[str] | None, threshold: float, iou: float, max_detections: int):
        self.layout, self.quant, self.names, self.labels = layout, quant, tuple(names), labels
        self.threshold, self.iou, self.max_detections = threshold, iou, max_detections
        self._stored_threshold = quantized_threshold(threshold, quant, dtype)
        height, width = input_size
        self._unit = np.array([height, width], np.float32) if layout.pixel_boxes else np.ones(2, np.float32)

    def __call__(self, outputs: Sequence[np.ndarray], box_transform) -> Decoded:
        head = outputs[0][0]
        rows = head.T if self.layout.channels_first else head
        nc = self.layout.classes
        class_scores = rows[:, 4:4 + nc]
        gate = class_scores.max(axis=1)
        candidates = np.flatnonzero(gate >= self._stored_threshold)
        if candidates.size == 0:
            return _NO_POSES
        values = dequantize(rows[candidates], self.quant)
        class_ids = values[:, 4:4 + nc].argmax(axis=1)
        scores = values[np.arange(len(candidates)), 4 + class_ids]
        cx, cy, w, h = (values[:, i] for i in range(4))
        boxes = np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=1)
        boxes /= np.tile(self._unit, 2)
        points = values[:, 4 + nc:].reshape(len(candidates), self.layout.keypoints, self.layout.values_per_keypoint)
        valid = (scores >= self.threshold) & np.isfinite(values).all(axis=1)
        boxes, scores, class_ids, points = boxes[valid], scores[valid], class_ids[valid], points[valid]
        keep = class_aware_nms(boxes, scores, class_ids, self.iou, self.max_detections)
        frame_boxes = boxes_to_frame(boxes[keep], box_transform)
        poses = []
        for i, box in zip(keep, frame_boxes):
            xs, ys = points_to_frame(points[i, :, 0] / self._unit[1], points[i, :, 1] / self._unit[0], box_transform)
            visibility = points[i, :, 2] if self.layout.values_per_keypoint == 3 else None
            class_id = int(class_ids[i])
            label = label_for(self.labels, class_id) if self.labels else "person"
            poses.append(Pose(class_id, label, float(scores[i]), as_box(box), _keypoints(self.names, xs, ys, visibility)))
        return Decoded(poses=tuple(poses))
