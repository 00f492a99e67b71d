"""An IoU tracker: each detection is matched to the object whose last box it overlaps most.

Greedy association, per class: the pair (object, detection) with the highest IoU is matched
first, then the next highest among the rest, down to `iou_threshold`; a detection left over
starts a new object, an object unmatched for more than `max_disappeared_s` is dropped.

Why not a maintained tracker: norfair (what Frigate uses) needs scipy, filterpy (which brings
matplotlib) and rich; measured on the 2-core VM, `import norfair` costs +65.6 MB RSS and ~1 s,
more than the agent's whole memory budget on a board, for 0.5 ms per frame with 5 objects.
This one costs numpy only (see `python -m edge_agent.interpret.benchmark` for its cost).

Limits (stated, not hidden):
- no motion model: an object that moves more than about its own width between two processed
  frames no longer overlaps its last box, so it gets a new track_id (raise max_fps, or lower
  iou_threshold, for fast objects);
- two objects of the same class that cross may swap ids (greedy IoU has no appearance cue);
- an object hidden for longer than max_disappeared_s comes back as a new object;
- greedy rather than optimal (Hungarian) assignment: with crowds of overlapping same-class boxes
  it can pick a worse pairing; with the detections a board produces (tens at most) the two agree
  nearly always, and greedy needs no scipy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

Box = tuple[float, float, float, float]  # ymin, xmin, ymax, xmax, normalised


@dataclass
class Track:
    track_id: int
    class_id: int
    label: str
    box: Box
    score: float
    first_ts: float
    last_ts: float


@dataclass(frozen=True)
class Observation:
    """One detection as the tracker sees it."""

    class_id: int
    label: str
    score: float
    box: Box


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a [N, 4] with every box in b [M, 4] (ymin, xmin, ymax, xmax)."""
    ymin = np.maximum(a[:, None, 0], b[None, :, 0])
    xmin = np.maximum(a[:, None, 1], b[None, :, 1])
    ymax = np.minimum(a[:, None, 2], b[None, :, 2])
    xmax = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ymax - ymin, 0.0, None) * np.clip(xmax - xmin, 0.0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0.0, None) * np.clip(a[:, 3] - a[:, 1], 0.0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0.0, None) * np.clip(b[:, 3] - b[:, 1], 0.0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


class IouTracker:
    def __init__(self, iou_threshold: float = 0.3, max_disappeared_s: float = 3.0, next_id: int = 1):
        self.iou_threshold = iou_threshold
        self.max_disappeared_s = max_disappeared_s
        self.next_id = next_id
        self.tracks: dict[int, Track] = {}

    def update(self, observations: Sequence[Observation], ts: float) -> list[int]:
        """Match this frame's observations; returns the track_id of each, in order."""
        ids = [0] * len(observations)
        unmatched = list(range(len(observations)))
        if self.tracks and observations:
            tracks = list(self.tracks.values())
            iou = iou_matrix(np.array([t.box for t in tracks], np.float64),
                             np.array([o.box for o in observations], np.float64))
            same_class = (np.array([t.class_id for t in tracks])[:, None]
                          == np.array([o.class_id for o in observations])[None, :])
            iou[~same_class | (iou < self.iou_threshold)] = 0.0
            while True:
                flat = int(np.argmax(iou))
                i, j = divmod(flat, iou.shape[1])
                if iou[i, j] <= 0.0:
                    break
                track, seen = tracks[i], observations[j]
                track.box, track.score, track.last_ts = seen.box, seen.score, ts
                ids[j] = track.track_id
                iou[i, :] = 0.0
                iou[:, j] = 0.0
            unmatched = [j for j in unmatched if not ids[j]]
        for j in unmatched:
            seen = observations[j]
            track = Track(self.next_id, seen.class_id, seen.label, seen.box, seen.score, ts, ts)
            self.next_id += 1
            self.tracks[track.track_id] = track
            ids[j] = track.track_id
        return ids

    def expire(self, ts: float) -> list[Track]:
        """Drop (and return) the objects unseen for more than max_disappeared_s."""
        gone = [t for t in self.tracks.values() if ts - t.last_ts > self.max_disappeared_s]
        for track in gone:
            del self.tracks[track.track_id]
        return gone
