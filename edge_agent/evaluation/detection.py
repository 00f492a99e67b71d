"""Detection accuracy: COCO mAP@0.5 and mAP@0.5:0.95 computed by pycocotools.

The model's detections come from the agent's decoder (boxes normalised to the frame, letterbox
or crop undone) and are scaled to each image's pixels; the ground truth is scaled the same way.
pycocotools' COCOeval does the matching and the 101-point interpolated average precision, the
way published COCO numbers and Ultralytics' `val` are computed.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import cv2
import numpy as np

from edge_agent.errors import InputError
from edge_agent.evaluation.detection_data import DetectionDataset, list_problems
from edge_agent.evaluation.timing import Latency, TimedRunner
from edge_agent.postprocess import label_for
from edge_agent.samples import Progress
from edge_agent.service.active_model import ActiveModel

EVAL_EXTRA_HINT = "install it with: pip install 'edge-agent[eval]' (it is not needed for inference)"


class EvaluatorMissing(InputError, RuntimeError):
    """pycocotools is not installed."""


class NothingEvaluated(InputError, ValueError):
    """Every image of the dataset had a problem."""


@dataclass(frozen=True)
class DetectionReport:
    images: int
    objects: int
    detections: int
    map50: float | None  # None when the images hold no objects at all
    map50_95: float | None
    recall100: float | None  # COCO AR@100 over IoU 0.5:0.95
    per_class_ap50: dict[str, float]  # classes with ground truth only
    problems: tuple[str, ...]
    class_mapping: str
    latency: dict[str, Latency]

    def to_dict(self) -> dict:
        return {
            "task": "detection",
            "images": self.images,
            "objects": self.objects,
            "detections": self.detections,
            "map50": _round(self.map50),
            "map50_95": _round(self.map50_95),
            "recall100": _round(self.recall100),
            "per_class_ap50": {label: round(ap, 6) for label, ap in self.per_class_ap50.items()},
            "class_mapping": self.class_mapping,
            "problems": list(self.problems),
            "latency_ms": {stage: value.to_dict() for stage, value in self.latency.items()},
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def check_evaluator() -> None:
    """Raise EvaluatorMissing (with what to install) before any work is done."""
    try:
        import pycocotools.cocoeval  # noqa: F401
    except ImportError:
        raise EvaluatorMissing(f"detection metrics need pycocotools: {EVAL_EXTRA_HINT}") from None


def evaluate_detection(active: ActiveModel, dataset: DetectionDataset, progress: Progress | None = None) -> DetectionReport:
    """Run every image through the agent (preprocess, invoke, decode) and score the detections."""
    check_evaluator()
    runner = TimedRunner(active)
    problems = list(dataset.problems)
    images, truths, results = [], [], []
    for number, item in enumerate(dataset.images, 1):
        if progress:
            progress(number, len(dataset.images))
        # as a camera frame: BGR, any size (grey and small images are common in detection sets:
        # COCO has both, and published numbers include them)
        frame = cv2.imread(str(item.path), cv2.IMREAD_COLOR)
        if frame is None:
            problems.append(f"{item.path}: not an image OpenCV can decode")
            continue
        frame_h, frame_w = frame.shape[:2]
        if item.size is not None and item.size != (frame_w, frame_h):
            problems.append(f"{item.path}: the annotations are for {item.size[0]}x{item.size[1]} pixels but the image "
                            f"is {frame_w}x{frame_h}: fix the image entry's width and height")
            continue
        image_id = len(images) + 1
        images.append({"id": image_id, "width": frame_w, "height": frame_h, "file_name": str(item.path)})
        for obj in item.objects:
            x1, y1, x2, y2 = obj.box
            box = [x1 * frame_w, y1 * frame_h, (x2 - x1) * frame_w, (y2 - y1) * frame_h]
            truths.append({"id": len(truths) + 1, "image_id": image_id, "category_id": obj.class_id, "bbox": box,
                           "area": box[2] * box[3], "iscrowd": int(obj.crowd)})
        for detection in runner.run_frame(frame).detections:
            ymin, xmin, ymax, xmax = detection.box
            box = [xmin * frame_w, ymin * frame_h, (xmax - xmin) * frame_w, (ymax - ymin) * frame_h]
            results.append({"id": len(results) + 1, "image_id": image_id, "category_id": detection.id, "bbox": box,
                            "area": box[2] * box[3], "score": detection.score, "iscrowd": 0})
    if not images:
        raise NothingEvaluated(f"no image of {dataset.source} could be evaluated:\n{list_problems(problems)}")
    class_ids = sorted({t["category_id"] for t in truths} | {r["category_id"] for r in results} | set(_model_classes(active)))
    stats, per_class = _coco_eval(images, truths, results, class_ids)
    return DetectionReport(
        images=len(images),
        objects=len(truths),
        detections=len(results),
        map50=stats[1],
        map50_95=stats[0],
        recall100=stats[8],
        per_class_ap50={label_for(active.labels, c): ap for c, ap in per_class.items()},
        problems=tuple(problems),
        class_mapping=dataset.class_mapping,
        latency=runner.latency(),
    )


def _model_classes(active: ActiveModel) -> range:
    return range(len(active.labels)) if active.labels else range(0)


def _coco_eval(images: list[dict], truths: list[dict], results: list[dict],
               class_ids: list[int]) -> tuple[list[float | None], dict[int, float]]:
    """COCOeval's 12 summary numbers (None where undefined) and AP@0.5 per class with ground truth."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    categories = [{"id": c, "name": str(c)} for c in class_ids]
    # pycocotools prints progress and the summary table; the command prints its own report
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth, detected = COCO(), COCO()
        ground_truth.dataset = {"images": images, "annotations": truths, "categories": categories}
        detected.dataset = {"images": images, "annotations": results, "categories": categories}
        ground_truth.createIndex()
        detected.createIndex()
        evaluation = COCOeval(ground_truth, detected, "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    stats = [None if value < 0 else float(value) for value in evaluation.stats]
    # precision[iou threshold, recall point, class, area range, max detections]; -1 marks "no ground truth"
    precision = evaluation.eval["precision"][0, :, :, 0, -1]
    with_truth = {t["category_id"] for t in truths if not t["iscrowd"]}
    per_class = {}
    for k, class_id in enumerate(evaluation.params.catIds):
        values = precision[:, k]
        if class_id in with_truth and np.any(values > -1):
            per_class[class_id] = float(np.mean(values[values > -1]))
    return stats, per_class
