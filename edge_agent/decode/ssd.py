"""SSD models ending in TFLite_Detection_PostProcess: boxes, classes, scores and a count, in any output order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from edge_agent.decode.common import IDENTITY_TRANSFORM, DecodeError, label_for
from edge_agent.records import Decoded, Detection


@dataclass(frozen=True)
class SsdOutputOrder:
    """Which output index holds boxes, classes, scores and the detection count."""

    boxes: int
    classes: int
    scores: int
    count: int


def ssd_order_from_roles(roles: Sequence[str]) -> SsdOutputOrder | None:
    """The order from each output's role as the model file records it (see runtime.tflite_file)."""
    if sorted(roles) != ["boxes", "classes", "count", "scores"]:
        return None
    return SsdOutputOrder(*(list(roles).index(role) for role in ("boxes", "classes", "scores", "count")))


def find_ssd_outputs(outputs: Sequence[np.ndarray], names: Sequence[str] = ()) -> SsdOutputOrder:
    """Identify the four TFLite_Detection_PostProcess outputs from the arrays alone.

    Used when the model file does not say which output is which. TF1 exports give
    (boxes, classes, scores, count); TF2 exports give other orders. Boxes and count are
    told apart by shape; classes and scores by the op's output names
    (`TFLite_Detection_PostProcess:1` classes, `:2` scores) or, failing that, by values
    (class ids are whole numbers and may exceed 1; scores lie in [0, 1]).
    """
    if len(outputs) != 4:
        raise DecodeError(f"an SSD model has 4 outputs (boxes, classes, scores, count); this one has {len(outputs)}")
    boxes = [i for i, a in enumerate(outputs) if a.ndim == 3 and a.shape[-1] == 4]
    counts = [i for i, a in enumerate(outputs) if a.size == 1]
    if len(boxes) != 1 or len(counts) != 1:
        shapes = [list(a.shape) for a in outputs]
        raise DecodeError(f"outputs {shapes} do not look like SSD post-processing (boxes [1,N,4] and count [1])")
    rest = [i for i in range(4) if i not in (boxes[0], counts[0])]
    by_name = _classes_scores_by_name(rest, names)
    if by_name:
        classes, scores = by_name
    else:
        classes, scores = _classes_scores_by_value(rest, outputs)
    return SsdOutputOrder(boxes=boxes[0], classes=classes, scores=scores, count=counts[0])


def _classes_scores_by_name(rest: list[int], names: Sequence[str]) -> tuple[int, int] | None:
    if len(names) != 4 or not all(names[i].startswith("TFLite_Detection_PostProcess") for i in rest):
        return None
    suffix = {i: names[i].rsplit(":", 1)[-1] for i in rest}
    classes = [i for i in rest if suffix[i] == "1"]
    scores = [i for i in rest if suffix[i] == "2"]
    if len(classes) == 1 and len(scores) == 1:
        return classes[0], scores[0]
    return None


def _classes_scores_by_value(rest: list[int], outputs: Sequence[np.ndarray]) -> tuple[int, int]:
    a, b = rest

    def looks_like_classes(array: np.ndarray) -> bool:
        return bool(np.all(np.mod(array, 1) == 0))

    if looks_like_classes(outputs[b]) and (not looks_like_classes(outputs[a]) or np.max(outputs[b]) > 1 >= np.max(outputs[a])):
        return b, a
    return a, b  # ambiguous (e.g. every score 0 or 1): keep the TF1 order


def decode_ssd(
    outputs: Sequence[np.ndarray],
    order: SsdOutputOrder,
    labels: Sequence[str] | None,
    threshold: float = 0.5,
    max_detections: int = 20,
    box_transform: tuple[float, float, float, float] = IDENTITY_TRANSFORM,
) -> tuple[Detection, ...]:
    """Detections above `threshold`, best first, boxes [ymin, xmin, ymax, xmax] in [0, 1] of the frame.

    `box_transform` = (ay, by, ax, bx) maps model-input coordinates back to the frame
    (frame_y = y * ay + by) so letterbox padding and centre crops are undone.
    """
    count = int(np.asarray(outputs[order.count]).reshape(-1)[0])
    boxes = np.asarray(outputs[order.boxes]).reshape(-1, 4)
    classes = np.asarray(outputs[order.classes]).reshape(-1)
    scores = np.asarray(outputs[order.scores]).reshape(-1)
    count = max(0, min(count, boxes.shape[0], classes.size, scores.size))
    ay, by, ax, bx = box_transform
    detections = []
    for i in np.argsort(-scores[:count], kind="stable"):
        score = float(scores[i])
        if score < threshold or len(detections) >= max_detections:
            break
        ymin, xmin, ymax, xmax = (float(v) for v in boxes[i])
        box = (
            _clip01(ymin * ay + by),
            _clip01(xmin * ax + bx),
            _clip01(ymax * ay + by),
            _clip01(xmax * ax + bx),
        )
        class_id = int(classes[i])
        detections.append(Detection(class_id, label_for(labels, class_id), score, box))
    return tuple(detections)


def _clip01(value: float) -> float:
    return min(1.0, max(0.0, value))


class SsdDecoder:
    """Decodes the op's outputs; the order comes from the model file when it says, else from the arrays."""

    def __init__(self, order: SsdOutputOrder | None, names: Sequence[str], labels: Sequence[str] | None,
                 threshold: float, max_detections: int):
        self.order, self.names, self.labels = order, list(names), labels
        self.threshold, self.max_detections = threshold, max_detections

    def __call__(self, outputs: Sequence[np.ndarray], box_transform: tuple[float, float, float, float]) -> Decoded:
        order = self.order or find_ssd_outputs(outputs, self.names)
        return Decoded(detections=decode_ssd(outputs, order, self.labels, self.threshold, self.max_detections, box_transform))
