"""Plain data that crosses module boundaries: frames in, predictions out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Frame:
    """One captured image (BGR uint8, HxWx3) with when it was captured."""

    image: np.ndarray = field(repr=False)
    index: int
    captured_at: float  # UNIX seconds, for the payload's `ts`
    captured_mono: float  # time.monotonic(), for latency


@dataclass(frozen=True)
class ClassScore:
    id: int
    label: str
    score: float


@dataclass(frozen=True)
class Detection:
    id: int
    label: str
    score: float
    box: tuple[float, float, float, float]  # ymin, xmin, ymax, xmax, normalised to the frame


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
    track_ids: tuple[int | None, ...] = ()  # the interpret stage's, one per detection (None: not tracked)

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
            payload["detections"] = [
                {"id": d.id, "label": d.label, "score": round(d.score, 5), "box": [round(v, 5) for v in d.box]}
                for d in self.detections
            ]
            for item, track_id in zip(payload["detections"], self.track_ids):
                if track_id is not None:
                    item["track_id"] = track_id
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
        return None
