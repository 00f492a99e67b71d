"""Events for tracked objects: `new` once an object is real, `update` when something about it
changes that matters, `end` when it has left.

False-positive suppression (as Frigate does it): a track becomes an object, and gets its `new`,
only once it has been seen in `min_frames` frames and the median of its last `min_frames` scores
reaches its label's threshold. A track that vanishes before that never produces an event.

`update` is sent when the object enters or leaves a zone, when its best score rises by at least
SCORE_STEP over the best score last announced, or every `update_interval_s` while it stays (0 =
never for time alone); not on every frame. `end` comes once the object has been unseen for
`max_disappeared_s` (reason "left"), when the pipeline stops ("stopped"), or at the next start
for an object that was still open when the agent died ("restarted").
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from edge_agent.interpret.policy import TIME_EPSILON_S
from edge_agent.interpret.tracker import Box, Track
from edge_agent.interpret.zones import Zone, zones_holding

SCORE_STEP = 0.05  # a best score this much higher than the last announced one is worth an update


@dataclass(frozen=True)
class ObjectEvent:
    type: str  # new | update | end
    track_id: int
    class_id: int
    label: str
    score: float
    top_score: float
    box: Box
    zones: tuple[str, ...]
    start_ts: float
    ts: float  # when: the frame that caused it (for end: the last frame the object was seen in)
    reason: str = ""  # end only: left | stopped | restarted

    def to_payload(self, seq: int) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "type": self.type, "track_id": self.track_id, "id": self.class_id, "label": self.label,
            "score": round(self.score, 5), "top_score": round(self.top_score, 5),
            "box": [round(v, 5) for v in self.box], "zones": list(self.zones),
            "start_ts": round(self.start_ts, 6), "ts": round(self.ts, 6),
            "duration_s": round(max(0.0, self.ts - self.start_ts), 3), "seq": seq,
        }
        if self.type == "end":
            payload["end_ts"] = round(self.ts, 6)
            payload["reason"] = self.reason
        return payload


@dataclass
class TrackedObject:
    """What events.py keeps about one track beyond its box."""

    track: Track
    scores: deque = field(default_factory=deque)
    frames: int = 0
    top_score: float = 0.0
    confirmed: bool = False
    zones: tuple[str, ...] = ()
    announced_top: float = 0.0
    last_event_ts: float = 0.0
    saved: dict[str, Any] | None = None  # to_state() as of the last event

    def event(self, kind: str, ts: float, reason: str = "") -> ObjectEvent:
        t = self.track
        return ObjectEvent(kind, t.track_id, t.class_id, t.label, t.score, self.top_score, t.box, self.zones,
                           t.first_ts, ts, reason)

    def to_state(self) -> dict[str, Any]:
        """What a restart needs to end this object's event: as of its last event (kept, so that saving
        the state with every event costs a serialisation, not a rebuild per open object)."""
        if self.saved is None:
            self.remember()
        return self.saved

    def remember(self) -> None:
        t = self.track
        self.saved = {"id": t.class_id, "label": t.label, "score": round(t.score, 5), "top_score": round(self.top_score, 5),
                      "box": [round(v, 5) for v in t.box], "zones": list(self.zones), "start_ts": t.first_ts,
                      "last_ts": t.last_ts}


def ended_after_restart(track_id: int, saved: dict[str, Any]) -> ObjectEvent:
    """The `end` of an object that was open when the previous run stopped without ending it."""
    return ObjectEvent("end", track_id, int(saved["id"]), str(saved["label"]), float(saved["score"]),
                       float(saved["top_score"]), tuple(saved["box"]), tuple(saved["zones"]),
                       float(saved["start_ts"]), float(saved["last_ts"]), "restarted")


class ObjectEvents:
    """Lifecycle of every tracked object of one pipeline."""

    def __init__(self, min_frames: int, update_interval_s: float, threshold: Callable[[str], float],
                 zones: tuple[Zone, ...] = ()):
        self.min_frames = min_frames
        self.update_interval_s = update_interval_s
        self._threshold = threshold
        self.zones = zones
        self.objects: dict[int, TrackedObject] = {}

    def seen(self, track: Track, ts: float) -> ObjectEvent | None:
        """A track matched (or started) in this frame; the event it causes, if any."""
        obj = self.objects.get(track.track_id)
        if obj is None:
            obj = self.objects[track.track_id] = TrackedObject(track, deque(maxlen=self.min_frames))
        obj.frames += 1
        obj.scores.append(track.score)
        obj.top_score = max(obj.top_score, track.score)
        zones = zones_holding(self.zones, track.label, track.box) if self.zones else ()
        if not obj.confirmed:
            obj.zones = zones
            if obj.frames >= self.min_frames and statistics.median(obj.scores) >= self._threshold(track.label):
                obj.confirmed = True
                return self._announce(obj, "new", ts)
            return None
        zones_changed = zones != obj.zones
        obj.zones = zones
        if (zones_changed or obj.top_score >= obj.announced_top + SCORE_STEP
                or (self.update_interval_s and ts - obj.last_event_ts >= self.update_interval_s - TIME_EPSILON_S)):
            return self._announce(obj, "update", ts)
        return None

    def gone(self, track: Track, reason: str = "left") -> ObjectEvent | None:
        """A track the tracker dropped; its `end` if it had become an object."""
        obj = self.objects.pop(track.track_id, None)
        if obj is None or not obj.confirmed:
            return None
        return obj.event("end", track.last_ts, reason)

    def confirmed(self) -> list[TrackedObject]:
        return [obj for obj in self.objects.values() if obj.confirmed]

    @staticmethod
    def _announce(obj: TrackedObject, kind: str, ts: float) -> ObjectEvent:
        obj.announced_top = obj.top_score
        obj.last_event_ts = ts
        obj.remember()
        return obj.event(kind, ts)
