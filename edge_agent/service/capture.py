"""The first stage of a pipeline: read the source, pace it, prepare each frame for the model.

A live source that fails is retried with backoff (service.source_health) and never ends the
pipeline; a file that cannot be opened raises SourceError. The capture loop beats its heartbeat
every time it goes round and while it waits between reconnect attempts, so a lost camera counts
as alive and only a read() that never returns (a wedged GStreamer pipeline or Picamera2) stops it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from edge_agent.config import PipelineConfig
from edge_agent.preprocess import Geometry
from edge_agent.service.active_model import ActiveModel
from edge_agent.service.source_health import SourceHealth
from edge_agent.sources import SourceError, is_live, make_source

POLL_S = 0.2  # longest sleep between two beats while pausing


@dataclass
class PreparedFrame:
    active: ActiveModel  # the model the buffer was prepared for (a swap takes effect per frame)
    buffer: np.ndarray
    geometry: Geometry
    index: int
    captured_at: float
    captured_mono: float
    image: np.ndarray | None = None  # a copy for the views, only while they want this frame (views.tap)


class ViewTap(Protocol):
    """What capture needs of a view tap (edge_agent.views.tap.PipelineTap)."""

    due_mono: float

    def claim(self, now_mono: float) -> bool: ...


class Heartbeat:
    """When a loop last went round. A loop that has ended for good is `stopped` and never goes stale."""

    __slots__ = ("mono", "running")

    def __init__(self) -> None:
        self.mono = time.monotonic()
        self.running = True

    def beat(self) -> None:
        self.mono = time.monotonic()

    def stop(self) -> None:
        self.running = False


class FrameCapture:
    """Reads one pipeline's source and prepares its frames; `run(deliver)` is the capture loop."""

    def __init__(self, config: PipelineConfig, stop: threading.Event, current_model: Callable[[], ActiveModel],
                 view: ViewTap | None = None):
        self.config = config
        self.view = view
        self.live = is_live(config.source)
        self.health: SourceHealth | None = None
        self.frames = 0  # frames read from the source
        self.heartbeat = Heartbeat()
        self._stop = stop
        self._current_model = current_model

    def run(self, deliver: Callable[[PreparedFrame], bool]) -> None:
        """Read and prepare frames until the source ends, stop is set or `deliver(frame)` returns False.

        Raises SourceError when a file source cannot be opened (a live one is retried)."""
        config = self.config
        source = make_source(config.source)
        health = self.health = SourceHealth(config.name, source.description, self.live)
        interval_s = 1.0 / config.max_fps if config.max_fps else 0.0
        next_due = 0.0
        opened = False
        index = 0
        try:
            while not self._stop.is_set():
                self.heartbeat.beat()
                if not opened:
                    try:
                        source.open()
                    except SourceError as err:
                        if not self.live:
                            raise
                        self._pause(health.failed(str(err)))
                        continue
                    opened = True
                    health.opened()
                try:
                    image = source.read()
                except SourceError as err:
                    source.close()
                    opened = False
                    self._pause(health.failed(str(err)))
                    continue
                if image is None:
                    health.ended()
                    return
                health.frame_arrived()
                captured_mono = time.monotonic()
                captured_at = time.time()
                self.frames += 1
                index += 1
                if interval_s:
                    if captured_mono < next_due:
                        if self.live:
                            continue  # a camera keeps its own pace: skip this frame
                        self._pause(next_due - captured_mono)
                        captured_mono, captured_at = time.monotonic(), time.time()
                    # keep the average rate, but after a stall start the spacing again from now
                    late_s = captured_mono - next_due
                    next_due = next_due + interval_s if next_due and late_s < interval_s else captured_mono + interval_s
                active = self._current_model()
                buffer = active.acquire_buffer()
                geometry = active.preprocessor.prepare(image, buffer)
                view = self.view
                # one attribute read per frame while nobody looks; the source reuses `image`, hence the copy
                kept = image.copy() if view is not None and captured_mono >= view.due_mono and view.claim(captured_mono) else None
                if not deliver(PreparedFrame(active, buffer, geometry, index, captured_at, captured_mono, kept)):
                    return
        finally:
            source.close()
            self.heartbeat.stop()

    def _pause(self, seconds: float) -> None:
        """Wait (stoppable), beating: waiting for a camera to come back or for the next paced frame is alive."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            self.heartbeat.beat()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._stop.wait(min(remaining, POLL_S))
