"""Plain data that crosses module boundaries: what decoders make of a frame and the predictions a
pipeline hands to its sinks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ClassScore:
    id: int
    label: str
    score: float


@dataclass(frozen=True)
class Keypoint:
    """A named point normalised to the frame; score is None for models that give none (MediaPipe faces)."""

    name: str
    x: float
    y: float
    score: float | None = None

    def to_payload(self) -> dict[str, Any]:
        point: dict[str, Any] = {"name": self.name, "x": round(self.x, 5), "y": round(self.y, 5)}
        if self.score is not None:
            point["score"] = round(self.score, 5)
        return point


@dataclass(frozen=True)
class Detection:
    id: int
    label: str
    score: float
    box: tuple[float, float, float, float]  # ymin, xmin, ymax, xmax, normalised to the frame
    keypoints: tuple[Keypoint, ...] = ()  # anchor-SSD heads with landmarks (e.g. a face's eyes and nose)
    coverage: float | None = None  # instance segmentation: the fraction of the frame its mask covers

    def to_payload(self) -> dict[str, Any]:
        item: dict[str, Any] = {"id": self.id, "label": self.label, "score": round(self.score, 5),
                                "box": [round(v, 5) for v in self.box]}
        if self.keypoints:
            item["keypoints"] = [k.to_payload() for k in self.keypoints]
        if self.coverage is not None:
            item["coverage"] = round(self.coverage, 5)
        return item


@dataclass(frozen=True)
class Pose:
    """One person (or animal): its score, the box around it and its keypoints, all in frame coordinates."""

    id: int
    label: str
    score: float
    box: tuple[float, float, float, float]
    keypoints: tuple[Keypoint, ...]

    def to_payload(self) -> dict[str, Any]:
        return {"id": self.id, "label": self.label, "score": round(self.score, 5),
                "box": [round(v, 5) for v in self.box], "keypoints": [k.to_payload() for k in self.keypoints]}


@dataclass(frozen=True)
class Segment:
    """One class present in a segmentation map: the fraction of the frame it covers and its bounding box."""

    id: int
    label: str
    coverage: float
    box: tuple[float, float, float, float]

    def to_payload(self) -> dict[str, Any]:
        return {"id": self.id, "label": self.label, "coverage": round(self.coverage, 5),
                "box": [round(v, 5) for v in self.box]}


@dataclass(frozen=True)
class SegmentationMask:
    """The per-pixel class map behind `segments` (or an instance segmentation's detections), kept for
    sinks (not sent per frame); -1 where no class is.

    `class_ids` is [H, W] in the model's input coordinates; `box_transform` (ay, by, ax, bx) maps
    normalised input coordinates to the frame (frame_y = y * ay + by), as for boxes.
    """

    class_ids: np.ndarray = field(repr=False)
    labels: tuple[str, ...]
    box_transform: tuple[float, float, float, float]


@dataclass(frozen=True)
class Decoded:
    """What a decoder made of one frame's outputs; only the fields of its task are filled."""

    classes: tuple[ClassScore, ...] = ()
    detections: tuple[Detection, ...] = ()
    poses: tuple[Pose, ...] = ()
    segments: tuple[Segment, ...] = ()
    mask: SegmentationMask | None = None
    outputs: tuple[dict[str, Any], ...] = ()

    @property
    def tracked(self) -> tuple[Detection, ...] | tuple[Pose, ...]:
        """The boxes the interpret stage tracks (one track id each): a pose model's poses, else the detections."""
        return self.poses or self.detections


@dataclass(frozen=True)
class ModelRef:
    name: str
    sha256: str
    version: str = ""


@dataclass(frozen=True)
class Prediction:
    """One processed frame's result, ready for any sink."""

    device: str
    pipeline: str
    seq: int
    ts: float
    model: ModelRef
    task: str
    inference_ms: float
    total_ms: float
    classes: tuple[ClassScore, ...] = ()
    detections: tuple[Detection, ...] = ()
    outputs: tuple[dict[str, Any], ...] = ()
    frame_index: int = 0
    track_ids: tuple[int | None, ...] = ()  # the interpret stage's, one per detection or pose (None: not tracked)
    poses: tuple[Pose, ...] = ()
    segments: tuple[Segment, ...] = ()
    mask: SegmentationMask | None = field(default=None, repr=False)  # for sinks; not in the payload

    def to_payload(self) -> dict[str, Any]:
        """The JSON object published for this prediction (documented in the README)."""
        payload: dict[str, Any] = {
            "device": self.device,
            "pipeline": self.pipeline,
            "seq": self.seq,
            "ts": round(self.ts, 6),
            "frame": self.frame_index,
            "model": {"name": self.model.name, "sha256": self.model.sha256},
            "latency_ms": {"inference": round(self.inference_ms, 3), "total": round(self.total_ms, 3)},
            "task": self.task,
        }
        if self.model.version:
            payload["model"]["version"] = self.model.version
        if self.task == "classification":
            payload["classes"] = [{"id": c.id, "label": c.label, "score": round(c.score, 5)} for c in self.classes]
        elif self.task == "detection":
            payload["detections"] = [d.to_payload() for d in self.detections]
            for item, track_id in zip(payload["detections"], self.track_ids):
                if track_id is not None:
                    item["track_id"] = track_id
        elif self.task == "pose":
            payload["poses"] = [p.to_payload() for p in self.poses]
            for item, track_id in zip(payload["poses"], self.track_ids):
                if track_id is not None:
                    item["track_id"] = track_id
        elif self.task == "segmentation":
            payload["segments"] = [s.to_payload() for s in self.segments]
        else:
            payload["outputs"] = list(self.outputs)
        return payload

    def top(self) -> tuple[str, float] | None:
        """The best label and score, for compact outputs; None when there is nothing."""
        if self.classes:
            return self.classes[0].label, self.classes[0].score
        if self.detections:
            best = max(self.detections, key=lambda d: d.score)
            return best.label, best.score
        if self.poses:
            pose = max(self.poses, key=lambda p: p.score)
            return pose.label, pose.score
        if self.segments:  # the class covering most of the frame, with its coverage as the score
            segment = max(self.segments, key=lambda s: s.coverage)
            return segment.label, segment.coverage
        return None
