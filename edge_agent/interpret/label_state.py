"""Classification: the stable top label, and a `change` event when it changes.

A new top label becomes the stable one once it has been the top label of `min_frames` frames in
a row; its score is the median of those frames' scores. Frames with no class above the
pipeline's threshold interrupt a run but change nothing.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Sequence


@dataclass(frozen=True)
class LabelChange:
    label: str
    previous: str | None
    score: float
    ts: float

    def to_payload(self, seq: int) -> dict[str, Any]:
        return {"type": "change", "label": self.label, "previous": self.previous, "score": round(self.score, 5),
                "ts": round(self.ts, 6), "seq": seq}


class StableLabel:
    def __init__(self, min_frames: int):
        self.min_frames = min_frames
        self.label: str | None = None
        self.score = 0.0
        self.since_ts = 0.0
        self._candidate: str | None = None
        self._scores: list[float] = []

    def observe(self, classes: Sequence[Any], ts: float) -> LabelChange | None:
        """`classes` best first (ClassScore-like: .label, .score)."""
        if not classes:
            self._candidate, self._scores = None, []
            return None
        top = classes[0]
        if top.label == self.label:
            self._candidate, self._scores = None, []
            return None
        if top.label != self._candidate:
            self._candidate, self._scores = top.label, []
        self._scores.append(float(top.score))
        if len(self._scores) < self.min_frames:
            return None
        change = LabelChange(top.label, self.label, statistics.median(self._scores), ts)
        self.label, self.score, self.since_ts = top.label, change.score, ts
        self._candidate, self._scores = None, []
        return change
