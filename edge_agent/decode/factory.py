"""Build the decoder for a matched layout, once per model load: labels fitted, thresholds resolved."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from edge_agent.config import ANCHOR_PRESETS, DEFAULT_THRESHOLD
from edge_agent.decode.anchors import AnchorSsdDecoder
from edge_agent.decode.classification import ClassificationDecoder
from edge_agent.decode.common import DecodeError, label_for
from edge_agent.decode.description import ModelDescription
from edge_agent.decode.layout_match import LayoutMatch
from edge_agent.decode.options import DecodeOptions
from edge_agent.decode.pose import MoveNetMultiDecoder, MoveNetSingleDecoder, YoloPoseDecoder
from edge_agent.decode.raw import RawDecoder
from edge_agent.decode.segmentation import SegmentationDecoder
from edge_agent.decode.ssd import SsdDecoder, ssd_order_from_roles
from edge_agent.decode.yolo import YoloDecoder
from edge_agent.decode.yolo_seg import YoloSegDecoder
from edge_agent.records import Decoded

DEFAULT_IOU = 0.45  # Ultralytics' default
BACKGROUND_LABELS = ("???", "background", "__background__")

Decoder = Callable[[Sequence[np.ndarray], tuple[float, float, float, float]], Decoded]


class ClassCountError(DecodeError):
    """The labels do not fit the number of classes the model's output holds."""


def make_decoder(match: LayoutMatch, description: ModelDescription, options: DecodeOptions,
                 labels: list[str] | None) -> tuple[Decoder, list[str] | None]:
    """The decoder for `match` and the labels it uses (a leading background entry dropped where it does not count)."""
    threshold = options.threshold if options.threshold is not None else DEFAULT_THRESHOLD.get(match.task, 0.0)
    outputs = description.outputs
    if match.layout == "classification":
        labels = _fit_class_labels(labels, match.params["classes"], description, "output has")
        return ClassificationDecoder(outputs[0].quant, labels, options.top_k, threshold), labels
    if match.layout == "ssd-postprocess":
        if labels and labels[0].strip().lower() in BACKGROUND_LABELS:
            labels = labels[1:]  # the op's class ids do not count the background entry of SSD label maps
        roles = match.params["roles"]
        order = ssd_order_from_roles(roles) if roles else None
        limits = label_limits(options, labels, threshold)
        decoder = SsdDecoder(order, [o.name for o in outputs], labels, min([threshold, *limits.values()]), options.max_detections)
        return _per_label(decoder, limits, threshold), labels
    if match.layout in ("yolo-v8", "yolo-v5", "yolo-end2end", "yolo-seg"):
        layout, seg = match.params["yolo"], match.params.get("seg")
        head = outputs[seg.head_index] if seg else outputs[0]
        if layout.classes:
            labels = _fit_class_labels(labels, layout.classes, description,
                                       f"output {list(head.shape)} holds", f" ({match.layout} layout)")
        count = layout.classes or (len(labels) if labels else 0)
        thresholds = class_thresholds(options, labels, count, threshold)
        input_size = (description.input_height, description.input_width)
        decoder = YoloDecoder(layout, head.quant, head.dtype, input_size, labels, thresholds, threshold,
                              options.iou if options.iou is not None else DEFAULT_IOU, options.max_detections)
        if seg:  # the same boxes, and a mask for each one kept
            names = [label_for(labels, c) for c in range(count)]
            decoder = YoloSegDecoder(decoder, seg, head.quant, outputs[seg.protos_index].quant, input_size, names)
        return decoder, labels
    if match.layout.startswith("segmentation-"):
        params = dict(match.params)
        if params["kind"] == "scores" and labels:
            labels = _fit_class_labels(labels, params["classes"], description, f"output {list(outputs[0].shape)} holds")
        if params["kind"] == "ids" and labels:
            params["classes"] = len(labels)  # ids beyond the labels are no class
        decoder = SegmentationDecoder(params["kind"], params["height"], params["width"], params["classes"],
                                      params["channels_first"], outputs[0].quant, outputs[0].dtype, labels, threshold,
                                      options.max_detections)
        return decoder, labels
    if match.layout == "movenet-single":
        return MoveNetSingleDecoder(outputs[0].quant, match.params["names"], labels, threshold), labels
    if match.layout == "movenet-multi":
        return MoveNetMultiDecoder(outputs[0].quant, labels, threshold, options.max_detections), labels
    if match.layout == "yolo-pose":
        layout = match.params["pose"]
        if labels:
            labels = _fit_class_labels(labels, layout.classes, description, f"output {list(outputs[0].shape)} holds", " (yolo-pose layout)")
        decoder = YoloPoseDecoder(layout, outputs[0].quant, outputs[0].dtype, (description.input_height, description.input_width),
                                  match.params["names"], labels, threshold, options.iou if options.iou is not None else DEFAULT_IOU,
                                  options.max_detections)
        return decoder, labels
    if match.layout == "anchor-ssd":
        params = match.params
        preset = ANCHOR_PRESETS.get(params["preset"], {})
        decoder_options = params["box_decoder"]
        if labels:
            labels = _fit_class_labels(labels, params["classes"], description, "scores hold")
        else:
            labels = list(preset.get("labels", ())) or None
        if options.threshold is None and decoder_options.min_score_thresh is not None:
            threshold = decoder_options.min_score_thresh
        iou = options.iou if options.iou is not None else preset.get("iou", DEFAULT_IOU)
        boxes, scores = outputs[params["boxes_index"]], outputs[params["scores_index"]]
        limits = label_limits(options, labels, threshold)
        decoder = AnchorSsdDecoder(params["anchors"], decoder_options, params["boxes_index"], params["scores_index"],
                                   boxes.quant, scores.quant, scores.dtype, labels, min([threshold, *limits.values()]),
                                   iou, options.max_detections)
        return _per_label(decoder, limits, threshold), labels
    return RawDecoder([o.name for o in outputs], [o.quant for o in outputs]), labels


_MIN_SCORE_KEYS = "labels.{label}.min_score (or its alias thresholds.{label})"  # where label_thresholds come from


def class_thresholds(options: DecodeOptions, labels: Sequence[str] | None, count: int, threshold: float) -> np.ndarray:
    """One threshold per class id: `threshold`, or the label's own min_score."""
    names = list(labels) if labels else [str(i) for i in range(count)]
    values = np.full(max(count, len(names)), threshold, np.float32)
    for label, value in options.label_thresholds:
        if label not in names:
            shown = ", ".join(names[:20]) + (", …" if len(names) > 20 else "")
            raise DecodeError(f"{_MIN_SCORE_KEYS.format(label=label)}: {label!r} is not one of the model's labels "
                              f"({shown}): use a label exactly as the model names it")
        values[names.index(label)] = value
    return values


def label_limits(options: DecodeOptions, labels: Sequence[str] | None, threshold: float) -> dict[str, float]:
    """The per-label thresholds, checked against the labels (for decoders that filter by label)."""
    if not options.label_thresholds:
        return {}
    names = list(labels) if labels else []
    for label, _ in options.label_thresholds:
        if names and label not in names:
            shown = ", ".join(names[:20]) + (", …" if len(names) > 20 else "")
            raise DecodeError(f"{_MIN_SCORE_KEYS.format(label=label)}: {label!r} is not one of the model's labels "
                              f"({shown}): use a label exactly as the model names it")
    return dict(options.label_thresholds)


def _per_label(decoder: Decoder, limits: dict[str, float], threshold: float) -> Decoder:
    """`decoder` (run at the lowest threshold) with each detection held to its label's threshold."""
    if not limits:
        return decoder

    def decode(outputs, box_transform) -> Decoded:
        decoded = decoder(outputs, box_transform)
        kept = tuple(d for d in decoded.detections if d.score >= limits.get(d.label, threshold))
        return Decoded(detections=kept)

    return decode


def _fit_class_labels(labels: list[str] | None, classes: int, description: ModelDescription, what: str,
                      layout_note: str = "") -> list[str] | None:
    """Labels must name every class; one extra leading background label (many label files have it) is dropped."""
    if not labels:
        return labels
    if len(labels) == classes + 1 and labels[0].strip().lower() in BACKGROUND_LABELS + ("none", ""):
        return labels[1:]
    if len(labels) == classes + 1 and what == "output has":  # classification keeps its historic leniency
        return labels[1:]
    if len(labels) != classes:
        raise ClassCountError(
            f"the labels have {len(labels)} entries but {description.name}'s {what} {classes} classes{layout_note}: "
            "use the labels file that belongs to this model"
        )
    return labels
