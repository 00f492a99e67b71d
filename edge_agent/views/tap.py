"""The hand-off between one pipeline and its views: newest frame wins, a pipeline never waits.

The pipeline's capture stage reads `due_mono` once per frame (no lock): a frame captured at or
after it is copied for the views (`claim`), everything else costs nothing. `due_mono` is infinite
while nobody watches, no snapshot is asked for and no event wants a picture, so an unwatched
pipeline copies nothing. A live viewer moves it to one frame per `1 / live_fps`; a snapshot request
or an event to the next frame. The output stage then `show`s the frame with its decoded result.

Viewers wait on the tap's condition for a newer frame and draw and encode it on their own thread;
a slow one simply finds a newer frame next time (it gets fewer frames), and holds no lock while
it draws or writes, so nothing it does reaches the pipeline.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from edge_agent.config import PipelineConfig, SnapshotConfig
from edge_agent.views.latency import LatencyHistogram

logger = logging.getLogger(__name__)

RECENT_EVENTS = 20  # kept per pipeline for the status page
OWED_FOR_S = 2.0  # an event waits this long for a frame (with an image) in which its object is seen
KEEP_IDLE_FRAME_S = 60.0  # the last frame is let go this long after the last viewer or request


@dataclass(frozen=True)
class ViewFrame:
    """One frame as the views see it."""

    image: np.ndarray = field(repr=False)  # BGR, a copy that belongs to the views
    index: int  # the source's frame number
    ts: float  # capture time, UNIX seconds
    task: str
    decoded: Any  # the decoder's result: classes, detections (and poses, segments, mask where the model has them)
    track_ids: tuple[int | None, ...] = ()  # one per tracked object (Decoded.tracked)
    seq: int = 0  # the tap's count of frames shown (newer frames have higher numbers)


@dataclass(frozen=True)
class ViewSettings:
    """What the views need from the pipeline's configuration."""

    pipeline: str
    zones: tuple[tuple[str, tuple[tuple[float, float], ...]], ...] = ()
    snapshot: SnapshotConfig = SnapshotConfig()

    @classmethod
    def of(cls, config: PipelineConfig) -> ViewSettings:
        return cls(config.name, tuple((z.name, z.polygon) for z in config.zones), config.snapshot)


# (tap, frame, index of the detection, label): an event's object seen in a frame with an image
EventFrameCallback = Callable[["PipelineTap", ViewFrame, int, str], None]
LatencyCallback = Callable[[float], None]  # seconds


class PipelineTap:
    """One pipeline's hand-off to its views (it outlives the pipeline across reloads and swaps)."""

    def __init__(self, name: str, live_fps: float = 5.0):
        self.name = name
        self.due_mono = math.inf  # read by the capture stage without a lock (a float store is atomic)
        self.settings = ViewSettings(name)
        self.on_event_frame: EventFrameCallback | None = None  # set when event snapshots are published
        # latency histograms (views.latency), when /metrics is served; the pipeline observes into them
        self.inference_latency: LatencyHistogram | None = None
        self.total_latency: LatencyHistogram | None = None
        self.observe_inference: LatencyCallback | None = None
        self.observe_total: LatencyCallback | None = None
        self.recent_events: deque[dict[str, Any]] = deque(maxlen=RECENT_EVENTS)
        self.frames_shown = 0
        self._live_interval_s = 1.0 / live_fps
        self._cond = threading.Condition()
        self._latest: ViewFrame | None = None
        self._watchers = 0
        self._requests = 0
        self._next_live_mono = 0.0
        self._owed: dict[int, tuple[str, float]] = {}  # track_id -> (event type, since), waiting for a frame
        self._track_best: dict[int, float] = {}  # track_id -> score of its last event snapshot
        self._last_use_mono = time.monotonic()
        self._jpeg_lock = threading.Lock()
        self._jpegs: dict[Any, tuple[int, bytes]] = {}

    # ----------------------------------------------------------------- the pipeline's side
    def configure(self, config: PipelineConfig) -> None:
        """The pipeline (re)started with `config`."""
        self.settings = ViewSettings.of(config)

    def measure_latency(self) -> None:
        """Keep latency histograms (for /metrics), across pipeline restarts."""
        if self.inference_latency is None:
            self.inference_latency, self.total_latency = LatencyHistogram(), LatencyHistogram()
            self.observe_inference, self.observe_total = self.inference_latency.observe, self.total_latency.observe

    def claim(self, now_mono: float) -> bool:
        """Capture stage, for a frame captured at `now_mono` >= due_mono: keep a copy of it? (It may
        have raced a change; the answer under the lock is the one that counts.)"""
        with self._cond:
            if now_mono < self.due_mono:
                return False
            if self._watchers:
                self._next_live_mono = now_mono + self._live_interval_s
            self._reschedule()
            return True

    def show(self, frame: ViewFrame | None, events: Sequence[Any] = ()) -> None:
        """Output stage: a processed frame (None when it kept no image) and the events it caused."""
        now = time.monotonic()
        if events:
            self._note_events(events, now)
        if frame is None:
            return
        matched: list[tuple[int, int, str, str]] = []
        with self._cond:
            self.frames_shown += 1
            frame = _numbered(frame, self.frames_shown)
            self._latest = frame
            self._requests = 0  # every waiting request is answered by this frame
            if self._owed:
                matched = self._match_owed(frame, now)
            self._reschedule()
            self._cond.notify_all()
        callback = self.on_event_frame
        if callback is not None:
            for index, track_id, label, kind in matched:
                score = float(frame.decoded.detections[index].score)
                if kind == "new" or score > self._track_best.get(track_id, 0.0):
                    self._track_best[track_id] = score
                    callback(self, frame, index, label)

    def _note_events(self, events: Sequence[Any], now: float) -> None:
        for event in events:
            self.recent_events.append(_summary(event))
            track_id = getattr(event, "track_id", None)
            if track_id is None or self.on_event_frame is None:
                continue
            if event.type == "end":
                self._track_best.pop(track_id, None)
                with self._cond:
                    self._owed.pop(track_id, None)
                    self._reschedule()
            else:
                with self._cond:
                    previous = self._owed.get(track_id)
                    # a `new` stays new until its first picture, whatever updates follow
                    kind = "new" if event.type == "new" or (previous and previous[0] == "new") else "update"
                    self._owed[track_id] = (kind, now)
                    self._reschedule()

    def _match_owed(self, frame: ViewFrame, now: float) -> list[tuple[int, int, str, str]]:
        """(detection index, track_id, label, event type) of the owed objects this frame shows; drops
        stale ones. Lock held."""
        matched = []
        detections = frame.decoded.tracked
        for index, track_id in enumerate(frame.track_ids):
            if track_id is not None and track_id in self._owed:
                kind, _ = self._owed.pop(track_id)
                matched.append((index, track_id, detections[index].label, kind))
        for track_id in [t for t, (_, since) in self._owed.items() if now - since > OWED_FOR_S]:
            del self._owed[track_id]  # its object was never seen again in a frame with an image
        return matched

    def _reschedule(self) -> None:
        """When the capture stage next keeps an image (lock held)."""
        if self._requests or self._owed:
            self.due_mono = 0.0  # the next frame
        elif self._watchers:
            self.due_mono = self._next_live_mono
        else:
            self.due_mono = math.inf

    # ----------------------------------------------------------------- the viewers' side
    @contextmanager
    def watching(self) -> Iterator[None]:
        """While inside, frames are kept at the live rate (one live viewer or many: the same rate)."""
        with self._cond:
            self._watchers += 1
            self._reschedule()
        try:
            yield
        finally:
            with self._cond:
                self._watchers -= 1
                self._last_use_mono = time.monotonic()
                self._reschedule()

    @property
    def watchers(self) -> int:
        return self._watchers

    def wait_newer(self, after_seq: int, timeout_s: float) -> ViewFrame | None:
        """A frame newer than `after_seq`, waiting up to `timeout_s`; None when none came."""
        with self._cond:
            latest = self._latest
            if latest is None or latest.seq <= after_seq:
                self._cond.wait(timeout_s)
                latest = self._latest
            return latest if latest is not None and latest.seq > after_seq else None

    def next_frame(self, timeout_s: float) -> ViewFrame | None:
        """The next frame shown after this call; after `timeout_s` without one (a lost camera, an ended
        file), the newest frame there is, which may be None."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            start = self.frames_shown
            self._requests += 1
            self._reschedule()
            while self.frames_shown == start:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._requests = max(0, self._requests - 1)
                    self._reschedule()
                    break
                self._cond.wait(remaining)
            self._last_use_mono = time.monotonic()
            return self._latest

    def latest(self) -> ViewFrame | None:
        return self._latest

    def jpeg(self, frame: ViewFrame, variant: Any, render: Callable[[ViewFrame], bytes]) -> bytes:
        """`render(frame)`, once per frame and variant however many viewers ask (the last one is cached)."""
        with self._jpeg_lock:
            cached = self._jpegs.get(variant)
            if cached is not None and cached[0] == frame.seq:
                return cached[1]
            data = render(frame)
            self._jpegs[variant] = (frame.seq, data)
            return data

    def let_go(self, now_mono: float) -> None:
        """Free the last frame once nobody has used it for KEEP_IDLE_FRAME_S (the agent's main loop calls this)."""
        if self._latest is None or self._watchers or self._requests:
            return
        if now_mono - self._last_use_mono > KEEP_IDLE_FRAME_S:
            with self._cond:
                if not self._watchers and not self._requests:
                    self._latest = None
            with self._jpeg_lock:
                self._jpegs.clear()


def _numbered(frame: ViewFrame, seq: int) -> ViewFrame:
    return ViewFrame(frame.image, frame.index, frame.ts, frame.task, frame.decoded, frame.track_ids, seq)


def _summary(event: Any) -> dict[str, Any]:
    """An event as the status page lists it."""
    if hasattr(event, "track_id"):
        return {"ts": round(event.ts, 3), "type": event.type, "label": event.label, "track_id": event.track_id,
                "score": round(event.score, 3), "zones": list(event.zones)}
    return {"ts": round(event.ts, 3), "type": "change", "label": event.label, "previous": event.previous,
            "score": round(event.score, 3)}
