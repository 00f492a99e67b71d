"""Which detections a pipeline tracks: `track` (labels), and per label `threshold` and `min_area`.

The decoder's own `threshold` and `max_detections` have already chosen what a prediction lists;
these filters only decide what is tracked (and so what has events and counts). A label's
`threshold` is the median score an object's first `min_frames` frames must reach (events.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class LabelRule:
    threshold: float
    min_area: float = 0.0


class DetectionFilter:
    def __init__(self, track: Iterable[str], rules: dict[str, LabelRule], default_threshold: float):
        self._track = frozenset(track)
        self._rules = dict(rules)
        self._default = LabelRule(default_threshold)

    def rule(self, label: str) -> LabelRule:
        return self._rules.get(label, self._default)

    def tracks(self, label: str) -> bool:
        return not self._track or label in self._track

    def accepts(self, label: str, box: tuple[float, float, float, float]) -> bool:
        """Tracked label, and a box at least min_area of the frame."""
        if self._track and label not in self._track:
            return False
        rule = self._rules.get(label)
        if rule is None or not rule.min_area:
            return True
        ymin, xmin, ymax, xmax = box
        return max(0.0, ymax - ymin) * max(0.0, xmax - xmin) >= rule.min_area
