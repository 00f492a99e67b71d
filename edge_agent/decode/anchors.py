"""MediaPipe-style anchor SSD heads (BlazeFace face detection, palm detection): raw box regressors and
scores decoded against generated anchors, with keypoints, then weighted or plain NMS.

The anchors follow SsdAnchorsCalculator and the decoding TensorsToDetectionsCalculator (MediaPipe's
CPU path), both configured with their own option names ([pipelines.NAME.anchors], [box_decoder]):
  anchor (y_center, x_center, h, w), normalised to the input
  x_center = x / x_scale * anchor_w + anchor_x, w = w / w_scale * anchor_w (likewise y, h); keypoints alike
  score = sigmoid(clip(raw, +-score_clipping_thresh)) when sigmoid_score
Scores are compared in the raw (logit) domain first, so only candidates are decoded.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from edge_agent.config import AnchorsConfig, BoxDecoderConfig
from edge_agent.decode.common import DecodeError, Quantization, boxes_to_frame, label_for, points_to_frame, quantized_threshold
from edge_agent.decode.nms import class_aware_nms, weighted_nms
from edge_agent.records import Decoded, Detection, Keypoint

_NO_DETECTIONS = Decoded()


def _layer_scale(options: AnchorsConfig, index: int) -> float:
    count = len(options.strides)
    if count == 1:
        return (options.min_scale + options.max_scale) * 0.5
    return options.min_scale + (options.max_scale - options.min_scale) * index / (count - 1.0)


def generate_anchors(options: AnchorsConfig, input_height: int, input_width: int) -> np.ndarray:
    """[N, 4] anchors (y_center, x_center, h, w) normalised to the input, in the order the model's boxes use.

    Layers with the same stride share one grid: their anchors are interleaved per cell, as
    SsdAnchorsCalculator does it (896 for BlazeFace short range: 16x16x2 + 8x8x6).
    """
    height = options.input_size_height or input_height
    width = options.input_size_width or input_width
    anchors = []
    layer = 0
    while layer < options.num_layers:
        ratios, scales = [], []
        last = layer
        while last < len(options.strides) and options.strides[last] == options.strides[layer]:
            scale = _layer_scale(options, last)
            if last == 0 and options.reduce_boxes_in_lowest_layer:
                ratios += [1.0, 2.0, 0.5]
                scales += [0.1, scale, scale]
            else:
                ratios += list(options.aspect_ratios)
                scales += [scale] * len(options.aspect_ratios)
                if options.interpolated_scale_aspect_ratio > 0.0:
                    following = 1.0 if last == len(options.strides) - 1 else _layer_scale(options, last + 1)
                    scales.append(math.sqrt(scale * following))
                    ratios.append(options.interpolated_scale_aspect_ratio)
            last += 1
        sizes = [(s / math.sqrt(r), s * math.sqrt(r)) for s, r in zip(scales, ratios)]  # (h, w)
        stride = options.strides[layer]
        rows, cols = math.ceil(height / stride), math.ceil(width / stride)
        ys = (np.arange(rows) + options.anchor_offset_y) / rows
        xs = (np.arange(cols) + options.anchor_offset_x) / cols
        grid = np.empty((rows, cols, len(sizes), 4), np.float32)
        grid[..., 0] = ys[:, None, None]
        grid[..., 1] = xs[None, :, None]
        if options.fixed_anchor_size:
            grid[..., 2:] = 1.0
        else:
            grid[..., 2] = np.array([h for h, _ in sizes], np.float32)
            grid[..., 3] = np.array([w for _, w in sizes], np.float32)
        anchors.append(grid.reshape(-1, 4))
        layer = last
    return np.concatenate(anchors) if anchors else np.zeros((0, 4), np.float32)


class AnchorSsdDecoder:
    """Decodes [1, N, num_coords] regressors and [1, N, num_classes] scores against `anchors`."""

    def __init__(self, anchors: np.ndarray, decoder: BoxDecoderConfig, boxes_index: int, scores_index: int,
                 box_quant: Quantization, score_quant: Quantization, score_dtype: np.dtype,
                 labels: Sequence[str] | None, threshold: float, iou: float, max_detections: int):
        self.anchors = anchors.astype(np.float32)
        self.options = decoder
        self.boxes_index, self.scores_index = boxes_index, scores_index
        self.box_quant, self.score_quant = box_quant, score_quant
        self.labels = labels
        self.threshold, self.iou, self.max_detections = threshold, iou, max_detections
        self.keypoint_names = decoder.keypoint_names or tuple(str(k) for k in range(decoder.num_keypoints))
        raw_threshold = self._raw_threshold(threshold)
        self._stored_threshold = quantized_threshold(raw_threshold, score_quant, score_dtype) if raw_threshold is not None else None
        self._scales = np.array([decoder.x_scale, decoder.y_scale, decoder.w_scale, decoder.h_scale], np.float32)

    def _raw_threshold(self, threshold: float) -> float | None:
        """The raw score at which sigmoid(clip(raw)) reaches `threshold` (None: nothing can)."""
        if not self.options.sigmoid_score:
            return threshold
        if threshold <= 0.0:
            return -math.inf
        if threshold >= 1.0:
            return None
        logit = math.log(threshold / (1.0 - threshold))
        clip = self.options.score_clipping_thresh
        if clip is not None and logit > clip:
            return None
        return logit if clip is None else max(logit, -clip)

    def _real(self, values: np.ndarray, quant: Quantization) -> np.ndarray:
        if quant.scale and values.dtype.kind in "iu":
            return (values.astype(np.float32) - quant.zero_point) * np.float32(quant.scale)
        return values.astype(np.float32, copy=False)

    def __call__(self, outputs: Sequence[np.ndarray], box_transform: tuple[float, float, float, float]) -> Decoded:
        if self._stored_threshold is None:
            return _NO_DETECTIONS
        raw_scores = outputs[self.scores_index].reshape(len(self.anchors), -1)
        best = raw_scores[:, 0] if raw_scores.shape[1] == 1 else raw_scores.max(axis=1)
        candidates = np.flatnonzero(best >= self._stored_threshold)
        if candidates.size == 0:
            return _NO_DETECTIONS
        chosen = self._real(raw_scores[candidates], self.score_quant)
        class_ids = np.zeros(len(candidates), np.intp) if chosen.shape[1] == 1 else chosen.argmax(axis=1)
        scores = chosen[np.arange(len(candidates)), class_ids]
        options = self.options
        if options.sigmoid_score:
            if options.score_clipping_thresh is not None:
                scores = np.clip(scores, -options.score_clipping_thresh, options.score_clipping_thresh)
            scores = 1.0 / (1.0 + np.exp(-scores))
        raw = self._real(outputs[self.boxes_index].reshape(len(self.anchors), -1)[candidates], self.box_quant)
        anchors = self.anchors[candidates]
        box = raw[:, options.box_coord_offset:options.box_coord_offset + 4]
        # YXHW unless reverse_output_order (XYWH), as MediaPipe's GetBoxFormat decides
        x, y, w, h = (box[:, 0], box[:, 1], box[:, 2], box[:, 3]) if options.reverse_output_order else \
            (box[:, 1], box[:, 0], box[:, 3], box[:, 2])
        x_scale, y_scale, w_scale, h_scale = self._scales
        x_center = x / x_scale * anchors[:, 3] + anchors[:, 1]
        y_center = y / y_scale * anchors[:, 2] + anchors[:, 0]
        width = w / w_scale * anchors[:, 3]
        height = h / h_scale * anchors[:, 2]
        boxes = np.stack([y_center - height / 2, x_center - width / 2, y_center + height / 2, x_center + width / 2], axis=1)
        points = np.zeros((len(candidates), options.num_keypoints, 2), np.float32)  # (x, y)
        if options.num_keypoints:
            start = options.keypoint_coord_offset
            values = raw[:, start:start + options.num_keypoints * options.num_values_per_keypoint]
            values = values.reshape(len(candidates), options.num_keypoints, options.num_values_per_keypoint)
            kx, ky = (values[..., 0], values[..., 1]) if options.reverse_output_order else (values[..., 1], values[..., 0])
            points[..., 0] = kx / x_scale * anchors[:, 3:4] + anchors[:, 1:2]
            points[..., 1] = ky / y_scale * anchors[:, 2:3] + anchors[:, 0:1]
        # MediaPipe drops boxes with a negative or NaN size; NaN anywhere must not reach a payload
        valid = (width >= 0) & (height >= 0) & np.isfinite(boxes).all(axis=1) & np.isfinite(scores) \
            & np.isfinite(points).all(axis=(1, 2)) & (scores >= self.threshold)
        boxes, scores, class_ids, points = boxes[valid], scores[valid], class_ids[valid], points[valid]
        if options.nms == "weighted":
            merged = [weighted_nms(boxes[class_ids == c], scores[class_ids == c], points[class_ids == c], self.iou,
                                   self.max_detections) + (c,) for c in np.unique(class_ids)]
            results = [(b, s, p, c) for boxes_c, scores_c, points_c, c in merged for b, s, p in zip(boxes_c, scores_c, points_c)]
            results.sort(key=lambda item: -item[1])
        else:
            keep = class_aware_nms(boxes, scores, class_ids, self.iou, self.max_detections)
            results = [(boxes[i], scores[i], points[i], class_ids[i]) for i in keep]
        results = results[: self.max_detections]
        if not results:
            return _NO_DETECTIONS
        frame_boxes = boxes_to_frame(np.stack([r[0] for r in results]), box_transform)
        detections = []
        for (box, score, point, class_id), frame_box in zip(results, frame_boxes):
            xs, ys = points_to_frame(point[:, 0], point[:, 1], box_transform)
            keypoints = tuple(Keypoint(name, float(px), float(py)) for name, px, py in zip(self.keypoint_names, xs, ys))
            detections.append(Detection(int(class_id), label_for(self.labels, int(class_id)), float(score),
                                        tuple(float(v) for v in frame_box), keypoints))
        return Decoded(detections=tuple(detections))


def check_anchor_count(anchors: np.ndarray, boxes: int, where: str) -> None:
    if len(anchors) != boxes:
        raise DecodeError(
            f"the anchors ({where}) give {len(anchors)} boxes but the model's outputs hold {boxes}: "
            "use the anchor settings the model was trained with (its MediaPipe graph's SsdAnchorsCalculator options)"
        )
